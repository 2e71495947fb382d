"""An omop spec of several outcomes: one task per outcome (``<spec>__<outcome>``) reading the spec's one landing
folder, each trained, gated, promoted and scoring on its own, and one report comparing them; a batch one of them
refuses stays in the shared folder for the others. The data are a SYNTHETIC CDM (omop_data.two_outcome_tables)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import yaml
from markupsafe import escape

from meddiag_pipelines.defs.assets.common import no_model_recorded
from meddiag_pipelines.defs.partitions import scan_landing
from meddiag_pipelines.ingestion.batches import ingest_new_batches
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.recovery import requeue
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.modalities.base import FeaturesRefused
from meddiag_pipelines.omop.batches import study_spec
from meddiag_pipelines.omop.report import comparison_html, outcome_comparison
from meddiag_pipelines.registry.summary import no_model
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, SpecError, load_spec, scan_specs
from meddiag_pipelines.split import SplitError
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.conftest import MEDDIAG, instance_env, run_cli
from meddiag_pipelines_tests.omop_data import CELECOXIB, TWO_OUTCOMES, two_outcome_tables, write_cdm

NAME = "nsaid_risks"
TASKS = [f"{NAME}__gi_bleed", f"{NAME}__kidney"]
NO_MODEL = "no model evaluated yet"
SPEC = {
    "name": NAME,
    "modality": "omop",
    "description": "SYNTHETIC: which of two outcomes NSAID new users may develop.",
    "cohort": {"target": {"domain": "drug", "concepts": [CELECOXIB]}, "prior_observation_days": 364},
    "outcomes": TWO_OUTCOMES,
    "time_at_risk": {"start": 1, "end": 365, "min_days": 364},
    "training": {"trials": 2, "timeout_s": 20, "max_rounds": 200},
    "evaluation": {"n_bootstrap": 200},
    "promotion": {"auroc_floor": 0.6, "slope_band": [0.2, 5.0]},  # a small cohort: the L1 model shrinks hard
}


def write_spec(folder: Path, spec: dict, file: str = "study.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_text(yaml.safe_dump(spec))
    return folder / file


def test_a_spec_of_two_outcomes_is_two_tasks_sharing_its_landing_folder(tmp_path: Path):
    tasks = load_spec(write_spec(tmp_path, SPEC)).tasks()
    assert [t.name for t in tasks] == TASKS
    assert [[o.name for o in t.outcomes] for t in tasks] == [["gi_bleed"], ["kidney"]]
    assert {t.landing_folder for t in tasks} == {NAME} and all(t.landing.shared for t in tasks)
    assert {(t.family.name, tuple(t.family.tasks)) for t in tasks} == {(NAME, tuple(TASKS))}
    assert [study_spec(t).outcomes[0].name for t in tasks] == ["gi_bleed", "kidney"]
    with pytest.raises(ValueError, match="a task has one outcome"):
        study_spec(load_spec(tmp_path / "study.yaml"))
    scan = scan_specs([tmp_path])
    assert ([s.name for s in scan.specs], scan.errors) == (TASKS, [])
    assert set(scan.files.values()) == {tmp_path / "study.yaml"}


def test_the_single_outcome_spec_keeps_its_task():
    spec = load_spec(BUNDLED_TASKS_DIR / "eunomia_gi_bleed.yaml")
    assert spec.tasks() == [spec]
    assert (spec.landing_folder, spec.landing.shared, spec.family) == ("eunomia_gi_bleed", False, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"family": {"name": "x", "tasks": ["x"]}}, "key 'family': .*set by the loader"),
        ({"name": "n" * 60}, "at most 63 characters"),
        ({"outcomes": [TWO_OUTCOMES[0], TWO_OUTCOMES[0]]}, "key 'outcomes': .*each under its own name"),
        ({"landing": {"folder": "../up"}}, "key 'landing.folder'"),
        (
            {"modality": "tabular", "label": "y", "landing": {"folder": "x"}}
            | dict.fromkeys(["cohort", "outcomes", "time_at_risk"]),
            "landing.folder: for omop tasks only",
        ),
    ],
)
def test_bad_outcome_specs_are_spec_errors(tmp_path: Path, change: dict, message: str):
    spec = {k: v for k, v in (SPEC | change).items() if v is not None}
    with pytest.raises(SpecError, match=f"study.yaml: .*{message}"):
        load_spec(write_spec(tmp_path, spec))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"name": TASKS[1], "outcomes": TWO_OUTCOMES[:1]}, f"task '{TASKS[1]}' is already defined"),
        ({"name": NAME, "outcomes": TWO_OUTCOMES[:1]}, f"'{NAME}' is already a task, spec or landing folder"),
        # reading the folder of a task that does not share it
        ({"name": "other", "outcomes": TWO_OUTCOMES[:1], "landing": {"folder": "solo"}}, "landing/solo/ is already"),
    ],
)
def test_names_and_folders_in_use_are_refused(tmp_path: Path, other: dict, message: str):
    write_spec(tmp_path, SPEC, "a.yaml")
    write_spec(tmp_path, SPEC | {"name": "solo", "outcomes": TWO_OUTCOMES[:1]}, "b.yaml")
    write_spec(tmp_path, SPEC | other, "c.yaml")
    scan = scan_specs([tmp_path])
    assert [s.name for s in scan.specs] == [*TASKS, "solo"]
    [error] = scan.errors
    assert error.path.name == "c.yaml" and message in str(error)


def test_a_spec_may_read_the_shared_folder_of_another(tmp_path: Path):
    write_spec(tmp_path, SPEC, "a.yaml")
    write_spec(tmp_path, SPEC | {"name": "late", "outcomes": TWO_OUTCOMES[:1], "landing": {"folder": NAME}}, "b.yaml")
    scan = scan_specs([tmp_path])
    assert scan.errors == [] and {s.landing_folder for s in scan.specs} == {NAME}


def test_a_batch_one_task_refuses_stays_in_the_shared_folder_for_the_others(tmp_path: Path):
    """Two tasks read one landing folder; the second refuses the batch: it is not moved (the first has read it
    and its features read it again), only its reason is written, and no later scan of the second reads it."""
    root, (first, second) = DataRoot(tmp_path / "data"), load_spec(write_spec(tmp_path, SPEC)).tasks()
    warehouse = Warehouse(root)
    batch = root.landing(NAME) / "b1"
    land(batch, two_outcome_tables(5, 1, seed=0))
    rows = pl.DataFrame({"person_id": [1, 2], "outcome": ["0", "1"]})

    def refuse(landed, spec):
        raise BatchRejected(landed.batch_id, "not for this outcome")

    assert ingest_new_batches(first, root, warehouse, lambda landed, spec: rows).ingested == ["b1"]
    assert [q["problem"] for q in ingest_new_batches(second, root, warehouse, refuse).quarantined] == [
        "not for this outcome"
    ]
    reason = json.loads((root.quarantine(second.name) / "b1" / "reason.json").read_text())
    assert (reason["problem"], reason["kept_in_landing"]) == ("not for this outcome", f"landing/{NAME}/b1")
    assert (batch / "person.parquet").is_file() and (batch / "_READY").is_file()
    assert ingest_new_batches(second, root, warehouse, refuse).skipped_known == 1
    assert scan_landing(second, root, warehouse, {"b1"}) == scan_landing(first, root, warehouse, {"b1"})
    assert scan_landing(second, root, warehouse, {"b1"}).again == {}
    assert sorted(p.name for p in root.quarantine(second.name).iterdir()) == ["b1"]
    assert (batch / "person.parquet").is_file()


def test_an_outcome_that_cannot_be_modelled_says_why_until_a_run_gets_past_it(tmp_path: Path):
    """The step's own error (a split or features refusal) and the labelled rows per class are recorded and the
    comparison written again, naming them; any other error is not recorded; a later run past the step clears it."""
    root = DataRoot(tmp_path / "data")
    first, second = load_spec(write_spec(tmp_path, SPEC)).tasks()
    storage, written = SimpleNamespace(root=root, registry=None), []
    rows = pl.DataFrame({first.label: ["0", "1", "0", None]})
    reason = "task x: every one of the 3 labelled rows is of class '0'"

    def comparison_writer(storage) -> None:
        written.append(outcome_comparison(storage, first.family))

    with pytest.raises(SplitError, match=reason):
        with no_model_recorded(second, storage, "split", rows, comparison_writer):
            raise SplitError(reason)
    [entries] = [{e["outcome"]: e for e in c["outcomes"]} for c in written]
    kidney = {k: v for k, v in entries["kidney"].items() if k != "no_model"}
    assert kidney == {
        "outcome": "kidney",
        "task": TASKS[1],
        "version": None,
        "persons": 3,
        "outcome_count": 1,
        "incidence": 1 / 3,
        "decision": f"no model: {reason}",
    }
    assert entries["kidney"]["no_model"]["step"] == "split"
    assert entries["gi_bleed"] == {"outcome": "gi_bleed", "task": TASKS[0], "version": None, "decision": NO_MODEL}
    assert f"<td>3</td><td>1 (33.3%)</td><td></td><td></td><td>no model: {escape(reason)}</td>" in comparison_html(
        written[0]
    )
    with pytest.raises(FeaturesRefused, match="nothing to learn"):
        with no_model_recorded(second, storage, "features", rows, comparison_writer):
            raise FeaturesRefused("nothing to learn")
    assert no_model(root, TASKS[1])["step"] == "features" and len(written) == 2

    with no_model_recorded(second, storage, "split", rows, comparison_writer):
        pass
    assert no_model(root, TASKS[1]) is None
    assert outcome_comparison(storage, first.family)["outcomes"][1]["decision"] == NO_MODEL
    with pytest.raises(KeyError, match="person 12"):  # not a refusal of the data: its words are not for a report
        with no_model_recorded(second, storage, "split", rows, comparison_writer):
            raise KeyError("person 12")
    assert no_model(root, TASKS[1]) is None and len(written) == 2


def land(folder: Path, tables: dict) -> None:
    write_cdm(folder, tables)
    (folder / "_READY").touch()


@pytest.mark.slow
def test_two_outcomes_end_to_end_through_meddiag_update(tmp_path: Path):
    write_spec(tmp_path / "tasks", SPEC)
    data = tmp_path / "data"
    env = instance_env(tmp_path / "home", data, tmp_path / "tasks")
    landing = data / "landing" / NAME
    land(landing / "batch_0001", two_outcome_tables(700, 1_000, seed=0))

    lines = run_cli([*MEDDIAG, "update", NAME], env=env, timeout=900, expect_rc=0).stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == TASKS
    comparison = json.loads((data / "reports" / NAME / "outcomes.json").read_text())
    entries = {e["outcome"]: e for e in comparison["outcomes"]}
    assert list(entries) == ["gi_bleed", "kidney"]
    for outcome, entry in entries.items():
        task = f"{NAME}__{outcome}"
        metrics = json.loads((data / "reports" / task / "latest" / "metrics.json").read_text())
        assert metrics["omop"]["outcome"] == outcome
        assert (entry["persons"], entry["outcome_count"]) == (700, metrics["omop"]["outcome_count"])
        assert 0.05 < entry["incidence"] < 0.5
        low, high = entry["test_auroc_ci"]
        assert 0.6 < entry["test_auroc"] and low < entry["test_auroc"] < high
        assert set(entry["models"]) == {"l1_logistic_regression", "xgboost"}
        assert entry["promoted"] is True and entry["champion"] == entry["version"]
        assert json.loads((data / "models" / task / "champion.json").read_text())["version"] == entry["version"]
    html = (data / "reports" / NAME / "outcomes.html").read_text()
    assert "gi_bleed" in html and "kidney" in html and "test AUROC (95% CI)" in html
    assert not (data / "quarantine").exists()

    # new persons still at risk, scored by both; a batch without concept_ancestor, which only the kidney outcome
    # (its concept set asks for descendants) refuses: it stays in the shared folder and the other task scores it
    land(landing / "batch_0002", two_outcome_tables(30, 50_000, seed=1, follow_days=100))
    land(landing / "batch_0003", two_outcome_tables(20, 60_000, seed=2, follow_days=100, ancestor=False))
    run_cli([*MEDDIAG, "update", NAME], env=env, timeout=900, expect_rc=0)
    for task in TASKS:
        [scored] = (data / "predictions" / task / "batch_0002").glob("*.parquet")
        risks = pl.read_parquet(scored)
        assert risks.height == 30 and risks["id"].cast(pl.Int64).min() >= 50_000
        assert risks["top_features"].str.contains(r"(hypertension|statin|rash|age|gender)[^;]* [+-]\d\.\d{3}").all()
    assert (data / "predictions" / TASKS[0] / "batch_0003").is_dir()
    assert not (data / "predictions" / TASKS[1] / "batch_0003").exists()
    kept = data / "quarantine" / TASKS[1] / "batch_0003"
    reason = json.loads((kept / "reason.json").read_text())
    assert "no concept_ancestor table" in reason["problem"]
    assert reason["kept_in_landing"] == f"landing/{NAME}/batch_0003"
    assert sorted(p.name for p in kept.iterdir()) == ["reason.json"]
    assert (landing / "batch_0003" / "person.parquet").is_file()

    # nothing new: the refused batch is not read again, nor moved
    run_cli([*MEDDIAG, "update", *TASKS], env=env, timeout=900, expect_rc=0)
    assert sorted(p.name for p in (data / "quarantine" / TASKS[1]).iterdir()) == ["batch_0003"]
    assert (landing / "batch_0003" / "person.parquet").is_file()
    warehouse = Warehouse(DataRoot(data))
    statuses = {t: dict(warehouse.ledger(t).select("batch_id", "status").iter_rows()) for t in TASKS}
    assert statuses[TASKS[0]] == {f"batch_000{i}": "validated" for i in (1, 2, 3)}
    assert statuses[TASKS[1]] == {"batch_0001": "validated", "batch_0002": "validated", "batch_0003": "quarantined"}

    # requeue: the batch never left the folder, so the task only forgets it, to read it again
    assert requeue(DataRoot(data), warehouse, TASKS[1], "batch_0003") == landing / "batch_0003"
    assert "batch_0003" not in warehouse.ledger(TASKS[1])["batch_id"].to_list()
    assert not kept.exists() and (landing / "batch_0003" / "person.parquet").is_file()
