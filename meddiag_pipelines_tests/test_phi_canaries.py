"""PHI canaries: the whole tabular pipeline runs (in a subprocess, on its own DAGSTER_HOME) with canary values
in every identifier field (id, patient_id) and in a free-text column excluded from features, plus hostile
batches carrying canaries to quarantine. No canary may appear in the Dagster event log, run records or
metadata, compute logs or anything else under DAGSTER_HOME, the captured stdout/stderr, the reports
(metrics.json, report.html, model_card.md), the quarantine reason.json files or the registry manifests.

Excluded by contract: ``reports/<task>/latest/test_predictions.parquet`` (and each version's own copy in
``models/<task>/<version>/``) and ``predictions/<task>/<batch>/*.parquet``
carry record ids (the user's own output); the warehouse holds the records themselves.

Also here (issue 7, item 6): static safety checks — no unsafe deserialisation, landing paths confined,
local-only UI and telemetry off.
"""

import json
import re

import dagster as dg
import polars as pl
import pytest
import yaml

from meddiag_pipelines_tests.conftest import REPO, synthetic_records
from meddiag_pipelines_tests.test_crash_safety import FAST_SPEC, TASK, land_batch, make_env, run_child

CANARY = "PHICANARY"


def canary_frame(n: int, seed: int, start: int) -> pl.DataFrame:
    frame = synthetic_records(n, seed=seed, start=start)
    return frame.with_columns(
        (pl.lit(CANARY + "ID") + pl.col("rid") + pl.lit("Z")).alias("rid"),
        (pl.lit(CANARY + "PT") + pl.col("pid") + pl.lit("Z")).alias("pid"),
        (pl.lit(f"seen by Dr {CANARY}NOTE at home ") + pl.col("rid")).alias("notes"),
    )


@pytest.mark.slow
def test_no_canary_leaks_anywhere(tmp_path):
    spec = {**FAST_SPEC, "exclude": ["notes"]}
    env = make_env(tmp_path, spec)
    good = canary_frame(400, seed=1, start=0)
    good = good.with_columns(pl.when(pl.col("rid").str.contains("r1[0-2]Z$")).then(None).otherwise(pl.col("outcome")).alias("outcome"))
    land_batch(tmp_path, "batch_0001", good)
    bad = canary_frame(20, seed=2, start=1000)
    land_batch(tmp_path, "batch_0002_dupes", pl.concat([bad, bad.head(2)]).with_columns(pl.lit("maybe").alias("outcome")))
    land_batch(tmp_path, "batch_0003_reexport", good.head(15))
    bad_csv = tmp_path / "data" / "landing" / TASK / "batch_0004_ragged"
    bad_csv.mkdir()
    (bad_csv / "records.csv").write_text(good.head(5).write_csv() + f"{CANARY}IDextra,{CANARY}PTx,1,2\n")
    (bad_csv / "_READY").touch()
    assert run_child(tmp_path, env) == 0

    planted = set(good["rid"]) | set(good["pid"]) | set(bad["rid"]) | set(bad["pid"])
    pattern = re.compile(rb"PHICANARY(?:ID|PT|NOTE)")
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    excluded = {data / "reports" / TASK / "latest" / "test_predictions.parquet",
                *(data / "models" / TASK).glob("*/test_predictions.parquet")}  # each version's own copy
    scanned, leaks = 0, []
    places = [home, tmp_path / "data" / "reports", data / "quarantine", data / "models"]
    for root in places:
        for path in root.rglob("*"):
            if path.is_file() and path.resolve() not in {p.resolve() for p in excluded}:
                if root == data / "quarantine" and path.name != "reason.json":
                    continue  # the quarantined files themselves are the landed data
                scanned += 1
                if pattern.search(path.read_bytes()):
                    leaks.append(str(path.relative_to(tmp_path)))
    for log in tmp_path.glob("child-*.log"):  # the run's captured stdout and stderr
        scanned += 1
        if pattern.search(log.read_bytes()):
            leaks.append(log.name)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert runs
        for run in runs:
            records = instance.all_logs(run.run_id)
            text = json.dumps([dg.serialize_value(r) if hasattr(dg, "serialize_value") else str(r) for r in records])
            text += json.dumps(run.tags) + str(run.run_config)
            if pattern.search(text.encode()):
                leaks.append(f"event log of run {run.run_id}")
    assert scanned > 20 and len(planted) > 600
    assert leaks == [], f"canaries leaked into: {leaks}"
    # The pipeline did see the canaries: they are in the user's own outputs and in quarantine.
    assert pattern.search((data / "reports" / TASK / "latest" / "test_predictions.parquet").read_bytes()) is not None
    reasons = sorted(p.parent.name for p in (data / "quarantine" / TASK).glob("*/reason.json"))
    assert reasons == ["batch_0002_dupes", "batch_0003_reexport", "batch_0004_ragged"]


PACKAGE = REPO / "meddiag_pipelines"
UNSAFE = [r"\bpickle\.loads?\(", r"\bjoblib\.load\(", r"\bcloudpickle\.", r"\bdill\.", r"allow_pickle\s*=\s*True",
          r"\bmarshal\.loads?\(", r"\byaml\.load\(", r"\bshelve\."]  # fmt: skip


def test_nothing_unpickles_untrusted_data():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(p, code) for p in UNSAFE):
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                found.append(f"{path.relative_to(REPO)}:{i}: torch.load without weights_only=True")
    assert not found, "\n".join(found)


def test_landing_paths_are_confined_to_the_data_folder():
    batches = (PACKAGE / "ingestion" / "batches.py").read_text()
    assert "layout.confine(batch_dir)" in batches and "layout.confine(task_landing)" in batches
    tabular = (PACKAGE / "ingestion" / "tabular.py").read_text()
    assert "is_symlink()" in tabular and "is_relative_to(batch.path.resolve())" in tabular


def test_ui_binds_localhost_and_telemetry_is_off():
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert config["telemetry"]["enabled"] is False
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "dagster dev" in line and line.strip().startswith(("DAGSTER_HOME", ".venv"))]
    assert commands and all("-h 127.0.0.1" in c for c in commands)
    assert "0.0.0.0" not in readme
