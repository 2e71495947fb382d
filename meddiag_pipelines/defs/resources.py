"""Resources: every read and write of the data folder goes through these, so a deployment can point them
elsewhere (another data root, object storage behind the same interface) without touching the assets."""


from pathlib import Path

import dagster as dg
from dagster_duckdb_polars import DuckDBPolarsIOManager

from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.layout import DataLayout, default_data_dir
from meddiag_pipelines.registry.store import ModelRegistry


class MeddiagStorage(dg.ConfigurableResource):
    """The data root: landing, warehouse, models, reports, quarantine and predictions."""

    data_dir: str

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir).resolve())

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.layout.warehouse_db())

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.layout.root / "models")


def build_resources(data_dir: Path | None = None) -> dict:
    layout = DataLayout(Path(data_dir or default_data_dir()).resolve())
    return {
        "storage": MeddiagStorage(data_dir=str(layout.root)),
        "warehouse_io_manager": DuckDBPolarsIOManager(database=str(layout.warehouse_db())),
    }
