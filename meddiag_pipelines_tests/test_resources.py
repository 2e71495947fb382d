import dagster as dg
import duckdb
import polars as pl
import pytest

from meddiag_pipelines.defs.resources.storage import MeddiagStorage, ParquetTables, build_resources
from meddiag_pipelines.storage import DataRoot, PathOutsideDataRoot


def _tables(db) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select table_name, table_type from information_schema.tables where table_schema = 'task'")
        return dict(rows.fetchall())


def _query(layout: DataRoot, sql: str) -> dict:
    """As a SQL user does: the views' files are relative to the warehouse folder."""
    with duckdb.connect(str(layout.warehouse_db()), read_only=True) as con:
        con.execute(f"set file_search_path = '{layout.warehouse_dir()}'")
        return con.execute(sql).pl().to_dict(as_series=False)


def _resources(tmp_path) -> dict:
    return {**build_resources(tmp_path), "mem": dg.InMemoryIOManager()}


def test_each_run_writes_its_own_table_and_the_view_shows_the_newest(tmp_path):
    """Each run's frame is its own file (reordered and new columns stay aligned), downstream steps of that run
    read it back, later runs that do not write it read the newest, and DuckDB users see it as ``task.table``;
    an empty frame leaves no rows in the view."""
    frames = iter(
        [
            pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
            pl.DataFrame({"b": ["p", "q", "r"], "a": [7, 8, 9], "c": [0.5, 0.5, 0.5]}),
            pl.DataFrame(),
        ]
    )

    @dg.asset(key=["task", "table"], io_manager_key="warehouse_io_manager")
    def table() -> pl.DataFrame:
        return next(frames)

    @dg.asset(key=["task", "reader"], ins={"table": dg.AssetIn(["task", "table"])}, io_manager_key="mem")
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        return table

    layout = DataRoot(tmp_path)
    resources = _resources(tmp_path)
    first = dg.materialize([table], resources=resources)
    meta = first.asset_materializations_for_node("task__table")[0].metadata
    assert meta["dagster/row_count"].value == 2 and meta["dagster/table_name"].value == "task.table"
    assert meta["path"].value.startswith("warehouse/tables/task/table/")  # relative to the data root
    second = dg.materialize([table, reader], resources=resources)
    expected = {"b": ["p", "q", "r"], "a": [7, 8, 9], "c": [0.5] * 3}
    assert second.output_for_node("task__reader").to_dict(as_series=False) == expected
    from_disk = dg.materialize([table.to_source_asset(), reader], resources=resources, selection=[reader])
    assert from_disk.output_for_node("task__reader").to_dict(as_series=False) == expected
    assert len(list(layout.table("task", "table").glob("*.parquet"))) == 2  # the first run's file is kept
    assert _tables(layout.warehouse_db()) == {"table": "VIEW"}
    assert _query(layout, "select b, a, c from task.table order by a") == expected
    assert not list(layout.table("task", "table").glob(".*.tmp"))  # no temp file left behind

    dg.materialize([table], resources=resources)  # an empty frame leaves no stale rows behind
    assert _tables(layout.warehouse_db()) == {}


def test_a_partitioned_table_is_one_frame_downstream_and_one_view(tmp_path):
    """A file per partition; an unpartitioned reader gets the partitions concatenated in partition order
    (columns by name), and the view covers every partition's newest file."""
    parts = dg.StaticPartitionsDefinition(["b1", "b2"])
    frames = {"b1": pl.DataFrame({"a": [1, 2]}), "b2": pl.DataFrame({"b": ["z"], "a": [3]})}

    @dg.asset(key=["task", "table"], io_manager_key="warehouse_io_manager", partitions_def=parts)
    def table(context) -> pl.DataFrame:
        return frames[context.partition_key]

    @dg.asset(key=["task", "reader"], ins={"table": dg.AssetIn(["task", "table"])}, io_manager_key="mem")
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        return table

    resources = _resources(tmp_path)
    for key in ("b2", "b1"):
        dg.materialize([table], resources=resources, partition_key=key)
    read = dg.materialize([table.to_source_asset(), reader], resources=resources, selection=[reader])
    assert read.output_for_node("task__reader").to_dict(as_series=False) == {"a": [1, 2, 3], "b": [None, None, "z"]}
    assert _query(DataRoot(tmp_path), "select a from task.table order by a") == {"a": [1, 2, 3]}


def test_other_values_are_json_files_of_their_run(tmp_path):
    @dg.asset(key=["task", "plan"])
    def plan(context) -> dict:
        return {"run": context.run_id}

    @dg.asset(key=["task", "user"], ins={"plan": dg.AssetIn(["task", "plan"])}, io_manager_key="mem")
    def user(plan: dict) -> dict:
        return plan

    resources = _resources(tmp_path)
    runs = [dg.materialize([plan, user], resources=resources) for _ in range(2)]
    for run in runs:
        assert run.output_for_node("task__user") == {"run": run.run_id}
    assert len(list(DataRoot(tmp_path).values("task", "plan").glob("*.json"))) == 2
    later = dg.materialize([plan.to_source_asset(), user], resources=resources, selection=[user])
    assert later.output_for_node("task__user") == {"run": runs[1].run_id}  # the newest run's value

    @dg.asset(key=["task", "plan"])
    def not_json() -> dict:
        return {"x": float("nan")}

    with pytest.raises(
        ValueError, match="not JSON compliant: nan"
    ):  # a value that would not come back as written is refused, not stored
        dg.materialize([not_json], resources=resources)


def test_a_missing_table_is_named(tmp_path):
    @dg.asset(key=["task", "reader"], ins={"table": dg.AssetIn(["task", "table"])}, io_manager_key="mem")
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        return table

    table = dg.SourceAsset(key=["task", "table"], io_manager_key="warehouse_io_manager")
    with pytest.raises(FileNotFoundError, match=r"warehouse/tables/task/table: no value for asset task/table"):
        dg.materialize([reader, table], resources=_resources(tmp_path), selection=[reader])


def test_a_run_reuses_what_it_wrote_within_the_memory_bound(tmp_path, monkeypatch):
    tables = ParquetTables(MeddiagStorage(data_dir=str(tmp_path)).root)
    key = dg.AssetKey(["task", "table"])
    small, large = pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": list(range(10_000))})
    monkeypatch.setattr(ParquetTables, "KEEP_BYTES", 1_000)
    for frame in (small, large):
        tables.handle_output(dg.build_output_context(asset_key=key, run_id="run-1"), frame)
        for path in DataRoot(tmp_path).table("task", "table").glob("*.parquet"):
            path.unlink()  # what a later step gets must not need the file
        upstream = dg.build_output_context(asset_key=key, run_id="run-1")
        context = dg.build_input_context(asset_key=key, upstream_output=upstream)
        if frame is small:
            assert tables.load_input(context) is frame
        else:  # over the bound: not kept
            with pytest.raises(FileNotFoundError, match="no value for asset task/table yet"):
                tables.load_input(context)


def test_data_root_refuses_paths_outside_it(tmp_path):
    root = DataRoot(tmp_path)
    assert root.relative(tmp_path / "a" / "b.json") == "a/b.json"
    for bad in ("/etc/passwd", "../x", "a/../../x"):
        with pytest.raises(ValueError, match="resolves outside the data folder"):
            root.path(bad)
    (tmp_path / "out").symlink_to(tmp_path.parent, target_is_directory=True)  # a link out of the root
    for bad in ("out/x.json", tmp_path / "out" / "x.json"):
        with pytest.raises(PathOutsideDataRoot, match="resolves outside the data folder"):
            root.confined(bad)
    with pytest.raises(PathOutsideDataRoot, match="resolves outside the data folder"):
        root.key("out/x.json")
