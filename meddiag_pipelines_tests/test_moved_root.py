"""Relative paths only: after full runs of a tabular and an image task, the data root is moved to a renamed
folder; the champions still score a newly landed batch there, and no file under the new root names the old one."""

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, TaskSpec, load_spec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import land, synthetic_records
from meddiag_pipelines_tests.test_imaging_pipeline import tiny
from scripts.phantoms import write_phantom_batch

pytestmark = pytest.mark.slow


def _run(specs: list[TaskSpec], root: Path, instance) -> None:
    defs = build_definitions(specs, root)
    for spec in specs:
        result = run_task_in_process(defs, spec, instance, raise_on_error=False)
        assert result.success, spec.name


def _phantoms(root: Path, task: str, batch: str, n: int, seed: int, labelled: bool) -> None:
    folder = write_phantom_batch(root / "landing" / task / batch, n=n, seed=seed, size=28)
    if not labelled:
        frame = pl.read_csv(folder / "labels.csv")
        frame.with_columns(
            pl.lit(None, pl.String).alias("label"),
            ("new_" + pl.col("id")).alias("id"),
            ("new_" + pl.col("patient_id")).alias("patient_id"),
        ).write_csv(folder / "labels.csv")
    (folder / "_READY").touch()


def test_a_moved_data_root_keeps_working_and_names_no_old_path(tmp_path, synthetic_spec):
    image_spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"))
    specs = [synthetic_spec, image_spec]
    old = tmp_path / "data"
    land(DataRoot(old), synthetic_spec.name, "batch_0001", synthetic_records(300, seed=1))
    _phantoms(old, image_spec.name, "batch_0001", n=120, seed=7, labelled=True)
    with dg.instance_for_test() as instance:
        _run(specs, old, instance)
        new = tmp_path / "relocated"
        shutil.move(old, new)
        layout = DataRoot(new)
        land(
            layout,
            synthetic_spec.name,
            "batch_0002",
            synthetic_records(6, seed=3, start=900).with_columns(pl.lit(None, pl.String).alias("outcome")),
        )
        _phantoms(new, image_spec.name, "batch_0002", n=4, seed=8, labelled=False)
        _run(specs, new, instance)

    for spec, n in ((synthetic_spec, 6), (image_spec, 4)):
        [scored] = [pl.read_parquet(f) for f in (layout.predictions(spec.name) / "batch_0002").glob("*.parquet")]
        assert scored.height == n and scored["model_version"].null_count() == 0
    with duckdb.connect(str(layout.warehouse_db()), read_only=True) as con:  # the views follow the root
        con.execute(f"set file_search_path = '{layout.warehouse_dir()}'")
        assert con.execute(f"select count(*) from {synthetic_spec.name}.split").fetchone()[0] == 306
    needle = str(old).encode()
    holding = [p.relative_to(new) for p in new.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert holding == []
