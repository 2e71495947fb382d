"""Retrain only when something changed: the training fingerprint and the champion asset that honours it."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines import __version__
from meddiag_pipelines.atomic import STALE_AFTER_S, atomic_write_json
from meddiag_pipelines.defs.assets.lifecycle import publish_candidate, unchanged_candidate
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.registry import store
from meddiag_pipelines.registry.fingerprint import (
    PACKAGE,
    code_version,
    source_digest,
    trained_batch_hashes,
    training_fingerprint,
)
from meddiag_pipelines.registry.promotion import Decision
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import land, synthetic_records


def test_fingerprint_follows_data_model_settings_and_code_only(synthetic_spec):
    base = training_fingerprint(["h1", "h2"], synthetic_spec, "1.0+abc")
    assert base == training_fingerprint(["h1", "h2"], synthetic_spec.model_copy(), "1.0+abc")
    unchanged = [
        synthetic_spec.model_copy(update={"description": "reworded"}),
        synthetic_spec.model_copy(
            update={"schedule": synthetic_spec.schedule.model_copy(update={"cron": "0 3 * * *"})}
        ),
        synthetic_spec.model_copy(update={"promotion": synthetic_spec.promotion.model_copy(update={"margin": 0.05})}),
    ]
    assert all(training_fingerprint(["h1", "h2"], s, "1.0+abc") == base for s in unchanged)
    changed = [
        training_fingerprint(["h1", "h2", "h3"], synthetic_spec, "1.0+abc"),  # new data
        training_fingerprint(["h2", "h1"], synthetic_spec, "1.0+abc"),  # the same batches in another order
        training_fingerprint(["h1", "h2"], synthetic_spec, "1.0+def"),  # new code
        training_fingerprint(
            ["h1", "h2"],
            synthetic_spec.model_copy(update={"training": synthetic_spec.training.model_copy(update={"seed": 7})}),
            "1.0+abc",
        ),
        training_fingerprint(["h1", "h2"], synthetic_spec.model_copy(update={"exclude": ["x3"]}), "1.0+abc"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_only_validated_batches_with_labelled_rows_count():
    ledger = pl.DataFrame(
        {
            "batch_id": ["b2", "b1", "b3", "b4"],
            "content_hash": ["h2", "h1", "h3", "h4"],
            "status": ["validated", "validated", "quarantined", "validated"],
        }
    )
    assert trained_batch_hashes(ledger, {"b1", "b2", "b3"}) == ["h1", "h2"]  # b4: cases to score only


def test_registry_finds_the_version_with_a_fingerprint_and_publishes_no_second_one(tmp_path):
    registry = ModelRegistry(DataRoot(tmp_path), "")
    held = [
        registry.publish("t", version, {"fingerprint": fingerprint})
        for version, fingerprint in (("v1", "f1"), ("v2", "f2"), ("v3", "f1"))
    ]
    assert held == ["v1", "v2", "v1"] and registry.versions("t") == ["v1", "v2"]
    assert not (tmp_path / "t" / ".staging" / "v3").exists()  # the copy's staging is discarded
    assert registry.version_with_fingerprint("t", "f1") == "v1"
    assert registry.version_with_fingerprint("t", "f9") is None
    registry.staging_dir("t", "v4")
    registry.discard_staged("t", "v4")
    assert not (tmp_path / "t" / ".staging" / "v4").exists() and registry.versions("t") == ["v1", "v2"]


def test_a_version_whose_run_died_after_claiming_its_inputs_is_published_by_the_next_run(tmp_path):
    registry = ModelRegistry(DataRoot(tmp_path), "")
    atomic_write_json(registry.staging_dir("t", "v1") / "manifest.json", {"fingerprint": "f1", "version": "v1"})
    assert registry.claim_fingerprint("t", "f1", "v1") == "v1"  # complete and claimed, then killed before the rename
    assert registry.publish("t", "v2", {"fingerprint": "f1"}) == "v1" and registry.versions("t") == ["v1"]
    assert registry.manifest("t", "v1")["version"] == "v1"


def test_a_fingerprint_claimed_by_a_run_that_died_elsewhere_gives_way_after_an_hour(tmp_path, monkeypatch):
    """A claim whose staged version is not on this host (another host's run, on an object store) and never
    published blocks its inputs for at most an hour."""
    registry = ModelRegistry(DataRoot(tmp_path), "")
    assert registry.claim_fingerprint("t", "f1", "v_dead") == "v_dead"  # claimed, never published
    assert registry.publish("t", "v2", {"fingerprint": "f1"}) == "v_dead" and registry.versions("t") == []
    later = time.time() + STALE_AFTER_S + 1
    monkeypatch.setattr(store.time, "time", lambda: later)
    assert registry.publish("t", "v3", {"fingerprint": "f1"}) == "v3" and registry.versions("t") == ["v3"]


def _candidate(version: str) -> dict:
    return {
        "version": version,
        "name": "xgboost",
        "framework": "xgboost",
        "params": {},
        "val_score": 0.9,
        "classes": ["no", "yes"],
        "device": "cpu",
        "plan": {"columns": []},
    }


def test_two_runs_publishing_the_same_inputs_at_once_publish_and_promote_one_version(
    tmp_path, synthetic_spec, monkeypatch
):
    """As two simultaneous `update`s under an instance without pools: both decide to publish and promote their
    candidate, trained from the same inputs, at the same moment."""
    storage = MeddiagStorage(data_dir=str(tmp_path))
    registry, promoted, runs = storage.registry, [], 6
    real_set_champion = ModelRegistry.set_champion
    monkeypatch.setattr(
        ModelRegistry, "set_champion", lambda self, *a, **k: promoted.append(a[1]) or real_set_champion(self, *a, **k)
    )
    together = threading.Barrier(runs)

    def publish(i: int) -> tuple[str, dict | None]:
        candidate = _candidate(f"v{i}")
        registry.staging_dir(synthetic_spec.name, candidate["version"])
        together.wait()
        return publish_candidate(
            synthetic_spec,
            storage,
            candidate,
            candidate,
            {"auroc": 0.9},
            None,
            Decision(True, ["first model clears the floor"]),
            "f1",
        )

    with ThreadPoolExecutor(runs) as pool:
        results = list(pool.map(publish, range(runs)))
    [version] = registry.versions(synthetic_spec.name)
    assert {holder for holder, _ in results} == {version} and promoted == [version]
    assert registry.champion(synthetic_spec.name)["version"] == version
    assert not list((tmp_path / "models" / synthetic_spec.name / ".staging").iterdir())  # the copies discarded
    loser = unchanged_candidate(storage, synthetic_spec.name, "v_late", version)
    assert loser["published"] is False and loser["unchanged_since"] == version and loser["champion"] == version


def _run(spec, layout) -> dict:
    defs = build_definitions([spec], layout.local)
    with dg.instance_for_test() as instance:
        result = run_task_in_process(defs, spec, instance)
    assert result.success
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey([spec.name, "champion"])
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.slow
def test_an_unchanged_rerun_publishes_nothing_and_a_changed_spec_retrains(synthetic_spec, layout):
    task = synthetic_spec.name
    land(layout, task, "batch_0001", synthetic_records(400, seed=1))
    first = _run(synthetic_spec, layout)
    registry = ModelRegistry(layout)
    assert first["published"] and first["promoted"] and len(registry.versions(task)) == 1
    champion = registry.champion(task)["version"]
    assert registry.manifest(task, champion)["fingerprint"] == first["fingerprint"]

    cases = synthetic_records(5, seed=2, start=400).with_columns(pl.lit(None, pl.String).alias("outcome"))
    land(layout, task, "batch_0002", cases)  # cases to score only: no new training data
    (layout.local / "models" / task / "champion.json").unlink()  # as if the first run died before writing it
    again = _run(synthetic_spec.model_copy(update={"description": "reworded"}), layout)
    assert not again["published"] and not again["promoted"]
    assert f"no new data, spec or code since version {champion}" in again["reasons"]
    assert registry.versions(task) == [champion] and registry.champion(task)["version"] == champion
    assert not any((layout.local / "models" / task / ".staging").iterdir())
    scored = pl.read_parquet(layout.predictions(task) / "batch_0002" / f"{champion}.parquet")
    assert scored.height == 5 and scored["model_version"].unique().to_list() == [champion]

    reseeded = synthetic_spec.model_copy(update={"training": synthetic_spec.training.model_copy(update={"seed": 7})})
    third = _run(reseeded, layout)
    assert third["published"] and third["fingerprint"] != first["fingerprint"] and len(registry.versions(task)) == 2
    assert json.loads((layout.local / "models" / task / "champion.json").read_text())["version"] in registry.versions(
        task
    )


def test_code_version_is_the_package_version_and_its_source_digest():
    assert code_version() == f"{__version__}+{source_digest(PACKAGE)[:12]}"


def test_the_source_digest_follows_the_code_and_templates_not_the_docs_or_specs(tmp_path):
    """A README or docs edit, a bundled spec reworded (the spec counts through its settings) or a compiled file
    changes no code; an edited, added or renamed source file or report template does."""
    package = tmp_path / "repo" / "meddiag_pipelines"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(package)
    (tmp_path / "repo" / "README.md").write_text("# reworded\n")
    (tmp_path / "repo" / "docs").mkdir()
    (tmp_path / "repo" / "docs" / "ARCHITECTURE.md").write_text("reworded\n")
    spec = package / "tasks" / "heart_disease.yaml"
    spec.write_text(spec.read_text() + "# reworded\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "specs.cpython-311.pyc").write_bytes(b"compiled")
    assert source_digest(package) == before

    edits = [package / "specs.py", package / "evaluation" / "templates" / "report.html.j2"]
    for path in edits:
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert source_digest(package) != before, path.name
        path.write_bytes(original)
    assert source_digest(package) == before
    (package / "draft.py").rename(package / "drafts.py")
    assert source_digest(package) != before
