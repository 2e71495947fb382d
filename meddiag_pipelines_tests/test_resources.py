import dagster as dg
import polars as pl

from meddiag_pipelines.defs.resources import WarehouseIOManager


def test_warehouse_io_manager_replaces_tables_whose_columns_change(tmp_path):
    """The stock handler appends by position into the first run's table: reordered or new columns would be
    silently misaligned. Each write must replace the table with exactly the frame written."""
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

    resources = {"warehouse_io_manager": WarehouseIOManager(database=str(tmp_path / "w.duckdb")),
                 "mem": dg.InMemoryIOManager()}  # fmt: skip
    dg.materialize([table], resources=resources)
    second = dg.materialize([table, reader], resources=resources)
    read_back = second.output_for_node("task__reader")
    assert read_back.sort("a").to_dict(as_series=False) == {"b": ["p", "q", "r"], "a": [7, 8, 9], "c": [0.5] * 3}
    dg.materialize([table], resources=resources)  # an empty frame leaves no stale rows behind
    import duckdb

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        assert con.execute("select count(*) from information_schema.tables where table_name = 'table'").fetchone()[0] == 0
