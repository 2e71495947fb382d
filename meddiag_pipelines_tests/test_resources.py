import dagster as dg
import duckdb
import polars as pl
import pytest

from meddiag_pipelines.defs.resources.storage import ParquetTables, WarehouseIOManager
from meddiag_pipelines.layout import DataLayout


def _tables(db) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select table_name, table_type from information_schema.tables where table_schema = 'task'")
        return dict(rows.fetchall())


def test_warehouse_io_manager_replaces_tables_and_keeps_a_duckdb_view(tmp_path):
    """Each write replaces the table with exactly the frame written (reordered and new columns stay aligned),
    downstream steps read it back, and DuckDB users see it as ``task.table``; an empty frame leaves no rows."""
    frames = iter([
        pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        pl.DataFrame({"b": ["p", "q", "r"], "a": [7, 8, 9], "c": [0.5, 0.5, 0.5]}),
        pl.DataFrame(),
    ])  # fmt: skip

    @dg.asset(key=["task", "table"], io_manager_key="warehouse_io_manager")
    def table() -> pl.DataFrame:
        return next(frames)

    @dg.asset(key=["task", "reader"], ins={"table": dg.AssetIn(["task", "table"])}, io_manager_key="mem")
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        return table

    layout = DataLayout(tmp_path)
    resources = {"warehouse_io_manager": WarehouseIOManager(data_dir=str(tmp_path)), "mem": dg.InMemoryIOManager()}
    first = dg.materialize([table], resources=resources)
    meta = first.asset_materializations_for_node("task__table")[0].metadata
    assert meta["dagster/row_count"].value == 2 and meta["dagster/table_name"].value == "task.table"
    second = dg.materialize([table, reader], resources=resources)
    expected = {"b": ["p", "q", "r"], "a": [7, 8, 9], "c": [0.5] * 3}
    assert second.output_for_node("task__reader").to_dict(as_series=False) == expected
    from_disk = dg.materialize([table.to_source_asset(), reader], resources=resources, selection=[reader])
    assert from_disk.output_for_node("task__reader").to_dict(as_series=False) == expected
    assert _tables(layout.warehouse_db()) == {"table": "VIEW"}
    with duckdb.connect(str(layout.warehouse_db()), read_only=True) as con:
        assert con.execute("select b, a, c from task.table order by a").pl().to_dict(as_series=False) == expected
    assert not list(layout.table("task", "table").parent.glob(".*.tmp"))  # no temp file left behind

    dg.materialize([table], resources=resources)  # an empty frame leaves no stale rows behind
    assert _tables(layout.warehouse_db()) == {}
    assert pl.read_parquet(layout.table("task", "table")).is_empty()


def test_warehouse_io_manager_replaces_a_table_left_by_an_earlier_release(tmp_path):
    layout = DataLayout(tmp_path)
    layout.warehouse().mkdir(parents=True)
    with duckdb.connect(str(layout.warehouse_db())) as con:
        con.execute("create schema task; create table task.table as select 1 as stale")

    @dg.asset(key=["task", "table"], io_manager_key="warehouse_io_manager")
    def table() -> pl.DataFrame:
        return pl.DataFrame({"fresh": [1]})

    dg.materialize([table], resources={"warehouse_io_manager": WarehouseIOManager(data_dir=str(tmp_path))})
    assert _tables(layout.warehouse_db()) == {"table": "VIEW"}


def test_warehouse_io_manager_names_the_missing_table(tmp_path):
    @dg.asset(key=["task", "reader"], ins={"table": dg.AssetIn(["task", "table"])}, io_manager_key="mem")
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        return table

    table = dg.SourceAsset(key=["task", "table"], io_manager_key="warehouse_io_manager")
    resources = {"warehouse_io_manager": WarehouseIOManager(data_dir=str(tmp_path)), "mem": dg.InMemoryIOManager()}
    with pytest.raises(FileNotFoundError, match=r"table\.parquet: no table for asset task/table"):
        dg.materialize([reader, table], resources=resources, selection=[reader])


def test_a_run_reuses_what_it_wrote_within_the_memory_bound(tmp_path, monkeypatch):
    tables = ParquetTables(DataLayout(tmp_path))
    key = dg.AssetKey(["task", "table"])
    small, large = pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": list(range(10_000))})
    monkeypatch.setattr(ParquetTables, "KEEP_BYTES", 1_000)
    for frame in (small, large):
        tables.handle_output(dg.build_output_context(asset_key=key), frame)
        DataLayout(tmp_path).table("task", "table").unlink()  # what a later step gets must not need the file
        if frame is small:
            assert tables.load_input(dg.build_input_context(asset_key=key)) is frame
        else:  # over the bound: not kept (and the smaller frame it replaced is gone too)
            with pytest.raises(FileNotFoundError):
                tables.load_input(dg.build_input_context(asset_key=key))
