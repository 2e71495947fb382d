"""Resources: every read and write of the data folder goes through these, so a deployment can point them
elsewhere (another data root, object storage behind the same interface) without touching the assets.

Asset values are run-scoped: each run writes its own file, ``<asset folder>/[<partition>/]<run>.<ext>``, where
``<run>`` is the run's sortable name (:func:`meddiag_pipelines.storage.run_name`, also the model version of the
run), and nothing is ever rewritten; two overlapping runs of a task cannot overwrite each other's inputs. A step
reads its upstream's file of its own run when the upstream ran in this run (or in the run this one re-executes),
else the newest file by name: a listing of one folder per partition, the same rule for Dagster and for the
DuckDB views, with no event-log query per partition (a task may hold thousands of batches)."""

import time
from functools import cached_property
from pathlib import Path

import dagster as dg
import polars as pl

from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import BATCH_COLUMN
from meddiag_pipelines.storage import DataRoot, default_data_root, is_object_store, run_name


class MeddiagStorage(dg.ConfigurableResource):
    """A holder of the data root (:class:`~meddiag_pipelines.storage.DataRoot`: landing, warehouse, models,
    reports, quarantine and predictions) and of the warehouse and model registry built on it, each built once per
    resource instance. ``data_dir``: a local folder or an object store URL (``s3://bucket/prefix``)."""

    data_dir: str

    @cached_property
    def root(self) -> DataRoot:
        return DataRoot(self.data_dir)

    @cached_property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.root)

    @cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.root)


class WarehouseIOManager(dg.ConfigurableIOManagerFactory):
    """Polars frames of asset ``[task, name]`` as ``warehouse/tables/<task>/<name>/[<partition>/]<run>.parquet``,
    viewed from the DuckDB file as ``<task>.<name>`` (the newest file; of each partition for a partitioned asset).

    Why not the DuckDB-Polars IO manager: a native DuckDB table costs 3.2 s to write and 0.45 s to read per
    1M x 27 frame on 2 cores (DuckDB compresses every column), Parquet with LZ4 0.33 s and 0.09 s; between steps
    that was a third of a 1M-row tabular run (bench/README.md#orchestration). It also inserted by column position
    into the first run's table, misaligning a later frame with other or reordered columns."""

    storage: dg.ResourceDependency[MeddiagStorage]

    def create_io_manager(self, context) -> "ParquetTables":
        return ParquetTables(self.storage.root)


class ValuesIOManager(dg.ConfigurableIOManagerFactory):
    """Every other asset value (feature plans, model handles, metrics, the champion decision: JSON-able dicts) as
    ``warehouse/values/<task>/<name>/[<partition>/]<run>.json``. Replaces Dagster's default ``fs_io_manager``, which
    pickles under the asset key in DAGSTER_HOME, so that overlapping runs overwrote each other's values."""

    storage: dg.ResourceDependency[MeddiagStorage]

    def create_io_manager(self, context) -> "JsonValues":
        return JsonValues(self.storage.root)


def _instance(context) -> dg.DagsterInstance | None:
    try:
        return context.step_context.instance
    except dg.DagsterInvariantViolationError:  # a context built by hand (tests)
        return None


def _run_id(output: dg.OutputContext | None) -> str | None:
    """The run that wrote an upstream value: this run, or the run a re-execution took it from."""
    try:
        return output.run_id if output is not None else None
    except dg.DagsterInvariantViolationError:
        return None


class RunScopedFiles(dg.IOManager):
    """One file per run (and partition) in the asset's folder; see the module docstring for which one is read."""

    suffix = ""

    def __init__(self, root: DataRoot):
        self.root = root
        self._names: dict[str, str] = {}

    def folder(self, task: str, name: str) -> Path:
        raise NotImplementedError

    def _asset_folder(self, key: dg.AssetKey) -> tuple[str, str, str]:
        *task, name = key.path
        task_name = "__".join(task)
        return task_name, name, self.root.relative(self.folder(task_name, name))

    def _run_name(self, instance: dg.DagsterInstance | None, run_id: str) -> str:
        if run_id not in self._names:
            record = instance.get_run_record_by_id(run_id) if instance else None
            self._names[run_id] = run_name(record.create_timestamp.timestamp() if record else time.time(), run_id)
        return self._names[run_id]

    def output_files(self, context: dg.OutputContext) -> tuple[str, str, dict[str | None, str]]:
        """Partition (``None``: unpartitioned) -> the file this run writes; a run may cover several partitions."""
        task, name, folder = self._asset_folder(context.asset_key)
        file = f"{self._run_name(_instance(context), context.run_id)}{self.suffix}"
        if context.has_asset_partitions:
            return task, name, {key: f"{folder}/{key}/{file}" for key in context.asset_partition_keys}
        return task, name, {None: f"{folder}/{file}"}

    def has(self, path: str) -> bool:
        return self.root.exists(path)

    def newest(self, folder: str) -> str | None:
        """The file of the latest-created run (runs created in the same second: by run id, arbitrary but fixed)."""
        files = [n for n in self.root.list(folder) if n.endswith(self.suffix)]
        return f"{folder}/{files[-1]}" if files else None

    def input_files(self, context: dg.InputContext) -> dict[str | None, str]:
        """Partition (``None``: unpartitioned) -> the file to read, in partition order."""
        _, _, folder = self._asset_folder(context.asset_key)
        run_id = _run_id(context.upstream_output)
        own = self._run_name(_instance(context), run_id) + self.suffix if run_id else None
        folders = (
            {k: f"{folder}/{k}" for k in context.asset_partition_keys}
            if context.has_asset_partitions
            else {None: folder}
        )
        found, missing = {}, []
        for key, sub in folders.items():
            mine = f"{sub}/{own}" if own else None
            path = mine if mine and self.has(mine) else self.newest(sub)
            if path:
                found[key] = path
            else:
                missing.append(key)
        asset = context.asset_key.to_user_string()
        if not found:
            raise FileNotFoundError(f"{folder}: no value for asset {asset} yet; materialize it first")
        if missing:
            context.log.warning(
                f"{asset}: {len(missing)} of {len(folders)} partitions not materialized yet; read the others"
            )
        return found


class ParquetTables(RunScopedFiles):
    """One per run (per step process with the multiprocess executor). Frames this run wrote are kept for its
    later steps in the same process, up to :data:`KEEP_BYTES` in all, so the in-process executor does not
    read back what it has just written; Polars frames are not changed in place by the assets. A partitioned
    upstream read by an unpartitioned step is one frame: the partitions' frames concatenated in partition order."""

    suffix = ".parquet"
    KEEP_BYTES = 1 << 30

    def __init__(self, root: DataRoot):
        super().__init__(root)
        self._kept: dict[str, pl.DataFrame] = {}
        self._widths: dict[str, int] = {}  # columns of the files this run wrote: no schema read for its views
        self._warehouse = Warehouse(root)

    def folder(self, task: str, name: str) -> Path:
        return self.root.table(task, name)

    def has(self, path: str) -> bool:
        return path in self._kept or super().has(path)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        task, name, files = self.output_files(context)
        for key, path in files.items():
            part = self._partition_rows(context, obj, key, len(files))
            self.root.write_parquet(path, part)
            self._widths[path] = part.width
            self._kept.pop(path, None)
            if sum(f.estimated_size() for f in self._kept.values()) + part.estimated_size() <= self.KEEP_BYTES:
                self._kept[path] = part
        self._register_view(task, name, context.has_asset_partitions)
        path = next(iter(files.values())) if len(files) == 1 else self.root.relative(self.folder(task, name))
        context.add_output_metadata(
            {
                "dagster/row_count": obj.height,
                "column_count": obj.width,
                "dagster/table_name": f"{task}.{name}",
                "path": dg.MetadataValue.path(path),
            }
        )

    def _register_view(self, task: str, name: str, partitioned: bool) -> None:
        """The newest file (of each partition), relative to the DuckDB file's folder. DuckDB cannot read a Parquet
        file without columns: such a file is left out of the view (no file left: no view). None on an object
        store: a view there needs DuckDB's httpfs extension (a download) or an fsspec filesystem registered on
        every connection, which a view stored in the file cannot carry; SQL users register s3fs themselves."""
        if self.root.remote:
            return
        folder = self.root.relative(self.folder(task, name))
        newest = (
            [self.newest(f"{folder}/{p}") for p in self.root.list(folder)] if partitioned else [self.newest(folder)]
        )
        files = [f for f in newest if f and (self._widths[f] if f in self._widths else self.root.parquet_width(f))]
        warehouse = self.root.relative(self.root.warehouse_dir())
        self._warehouse.register_view(task, name, [str(Path(f).relative_to(warehouse)) for f in files])

    @staticmethod
    def _partition_rows(context: dg.OutputContext, obj: pl.DataFrame, key: str | None, n_keys: int) -> pl.DataFrame:
        """A run over several partitions (one batch each) returns one frame: each partition's file holds the rows
        of its batch (a partition without rows gets an empty frame with the columns)."""
        if n_keys == 1 or not obj.height:
            return obj
        if BATCH_COLUMN not in obj.columns:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: a frame over several partitions needs the column "
                f"{BATCH_COLUMN} to be split into them"
            )
        return obj.filter(pl.col(BATCH_COLUMN) == key)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        files = self.input_files(context)
        frames = [self._kept[f] if f in self._kept else self.root.read_parquet(f) for f in files.values()]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


class JsonValues(RunScopedFiles):
    """A partitioned upstream read by an unpartitioned step is ``{partition: value}`` in partition order."""

    suffix = ".json"

    def folder(self, task: str, name: str) -> Path:
        return self.root.values(task, name)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        """The run's value, for each partition it covers."""
        _, _, files = self.output_files(context)
        for path in files.values():
            self.root.write_json(path, obj)
        context.add_output_metadata({"value": dg.MetadataValue.path(next(iter(files.values())))})

    def load_input(self, context: dg.InputContext):
        files = self.input_files(context)
        if list(files) == [None]:
            return self.root.read_json(files[None])
        return {key: self.root.read_json(path) for key, path in files.items()}


def build_resources(data_dir: Path | str | None = None) -> dict:
    """``data_dir``: a local folder or an object store URL (default: ``MEDDIAG_DATA_DIR``)."""
    root = str(data_dir or default_data_root())
    storage = MeddiagStorage(data_dir=root if is_object_store(root) else str(Path(root).resolve()))
    return {
        "storage": storage,
        "warehouse_io_manager": WarehouseIOManager(storage=storage),
        "io_manager": ValuesIOManager(storage=storage),
    }
