"""Resources: every read and write of the data folder goes through these, so a deployment can point them
elsewhere (another data root, object storage behind the same interface) without touching the assets."""


from pathlib import Path

import dagster as dg
import polars as pl
from dagster_duckdb_polars import DuckDBPolarsIOManager, DuckDBPolarsTypeHandler

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


class ReplacingPolarsTypeHandler(DuckDBPolarsTypeHandler):
    """Writes replace the whole table. The stock handler inserts *by column position* into the table made by
    the first write, which silently misaligns columns once a later run's frame has other or reordered
    columns (a new category level, a new column in an export), and it skips empty frames, leaving stale rows."""

    def handle_output(self, context: dg.OutputContext, table_slice, obj: pl.DataFrame, connection):
        if table_slice.partition_dimensions:
            return super().handle_output(context, table_slice, obj, connection)
        target = f"{table_slice.schema}.{table_slice.table}"
        connection.execute(f"create schema if not exists {table_slice.schema}")
        if obj.width == 0:
            connection.execute(f"drop table if exists {target}")
        else:
            replacement = obj.to_arrow()  # noqa: F841 - read by name in the query below
            connection.execute(f"create or replace table {target} as select * from replacement")
        context.add_output_metadata({"row_count": obj.height, "column_count": obj.width})


class WarehouseIOManager(DuckDBPolarsIOManager):
    """The DuckDB-Polars IO manager with whole-table replacement on write (see the handler)."""

    @staticmethod
    def type_handlers():
        return [ReplacingPolarsTypeHandler()]


def build_resources(data_dir: Path | None = None) -> dict:
    layout = DataLayout(Path(data_dir or default_data_dir()).resolve())
    return {
        "storage": MeddiagStorage(data_dir=str(layout.root)),
        "warehouse_io_manager": WarehouseIOManager(database=str(layout.warehouse_db())),
    }
