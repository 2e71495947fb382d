"""Sensors with a cursor, pinned schedules, the promotion decision both ways, registry and rollback."""

import json
import os
import time

import dagster as dg
import numpy as np
import pytest

from meddiag_pipelines.defs.automation.landing import build_landing_sensor, build_schedule
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.definitions import defs
from meddiag_pipelines.evaluation import EvaluationInput, evaluate
from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.promotion import decide
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.specs import EvaluationSpec, PromotionSpec
from meddiag_pipelines_tests.conftest import land, synthetic_records


def tick(sensor, storage, cursor=None):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
        result = sensor(context)
        return result, context.cursor


@pytest.fixture
def sensor_and_storage(synthetic_spec, layout):
    job = dg.define_asset_job("synthetic_risk_job", selection=dg.AssetSelection.groups("synthetic_risk"))
    return build_landing_sensor(synthetic_spec, job), MeddiagStorage(data_dir=str(layout.root))


def test_sensor_requests_once_per_new_batch(synthetic_spec, layout, sensor_and_storage):
    sensor, storage = sensor_and_storage
    result, cursor = tick(sensor, storage)
    assert isinstance(result, dg.SkipReason)
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    result, cursor = tick(sensor, storage, cursor)
    assert isinstance(result, dg.RunRequest) and result.run_key.startswith("synthetic_risk:b1@")
    assert set(json.loads(cursor)) == {"b1"}
    again, cursor_again = tick(sensor, storage, cursor)  # a repeated tick launches nothing
    assert isinstance(again, dg.SkipReason) and cursor_again == cursor
    land(layout, "synthetic_risk", "b2", synthetic_records(10, seed=2, start=10))
    second, cursor = tick(sensor, storage, cursor)
    assert second.run_key.startswith("synthetic_risk:b2@") and "b1@" not in second.run_key


def test_batches_ingested_outside_the_sensor_launch_nothing(synthetic_spec, layout, sensor_and_storage):
    """After a CLI run ingested the landing folder, starting `dagster dev` must not retrain for old batches."""
    from meddiag_pipelines.ingestion.batches import ingest_new_batches
    from meddiag_pipelines.tabular.readers import read_tabular_batch

    sensor, storage = sensor_and_storage
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    ingest_new_batches(synthetic_spec, layout, storage.warehouse, read_tabular_batch)
    assert (layout.landing("synthetic_risk") / "b1" / "_INGESTED").exists()
    result, _ = tick(sensor, storage)
    assert isinstance(result, dg.SkipReason)
    land(layout, "synthetic_risk", "b2", synthetic_records(10, seed=2, start=10))
    result, _ = tick(sensor, storage)
    assert result.run_key.startswith("synthetic_risk:b2@") and "b1@" not in result.run_key


def test_a_batch_relanded_under_a_known_name_is_noticed(synthetic_spec, layout, sensor_and_storage):
    """Issue 14 §9: the cursor knows the name; a new export under it (a fresh folder, or files changed in
    place after ingestion) is new content and gets a run, which sets the changed batch aside."""
    import shutil

    from meddiag_pipelines.ingestion.batches import ingest_new_batches
    from meddiag_pipelines.tabular.readers import read_tabular_batch

    sensor, storage = sensor_and_storage
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    first, cursor = tick(sensor, storage)
    ingest_new_batches(synthetic_spec, layout, storage.warehouse, read_tabular_batch)
    assert isinstance(tick(sensor, storage, cursor)[0], dg.SkipReason)
    shutil.rmtree(folder)
    land(layout, "synthetic_risk", "b1", synthetic_records(12, seed=2))
    relanded, cursor = tick(sensor, storage, cursor)
    assert isinstance(relanded, dg.RunRequest) and relanded.run_key != first.run_key
    summary = ingest_new_batches(synthetic_spec, layout, storage.warehouse, read_tabular_batch)
    assert [c["batch"] for c in summary.changed] == ["b1"]
    assert isinstance(tick(sensor, storage, cursor)[0], dg.SkipReason)


def test_half_written_batch_waits_for_its_marker(layout, sensor_and_storage):
    sensor, storage = sensor_and_storage
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1), ready=False)
    result, cursor = tick(sensor, storage)
    assert isinstance(result, dg.SkipReason)
    (folder / "_READY").touch()
    result, _ = tick(sensor, storage, cursor)
    assert isinstance(result, dg.RunRequest)


def test_restart_without_cursor_gives_the_same_run_key(layout, sensor_and_storage):
    """After a restart that lost the cursor, the same batch yields the same run_key, which Dagster dedupes."""
    sensor, storage = sensor_and_storage
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    first, _ = tick(sensor, storage)
    after_restart, _ = tick(sensor, storage, None)
    assert first.run_key == after_restart.run_key


def test_schedules_and_sensors_are_pinned():
    schedules = {s.name: s for s in defs.schedules}
    assert schedules["heart_disease_nightly_retrain"].cron_schedule == "0 2 * * *"
    assert schedules["heart_disease_nightly_retrain"].execution_timezone == "UTC"
    assert schedules["heart_disease_nightly_retrain"].default_status == dg.DefaultScheduleStatus.RUNNING
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["breast_cancer_landing_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    # One run per task at a time: the run queue limits runs by this tag (dagster_home/dagster.yaml).
    assert defs.resolve_job_def("heart_disease_job").tags["meddiag/task"] == "heart_disease"


def test_schedule_follows_the_spec_and_can_be_switched_off(synthetic_spec):
    spec = synthetic_spec.model_copy(update={"schedule": synthetic_spec.schedule.model_copy(
        update={"enabled": False, "cron": "30 3 * * 1", "timezone": "Europe/Paris"})})
    schedule = build_schedule(spec, dg.define_asset_job("j", selection="*"))
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * 1", "Europe/Paris")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def _metrics(y, p, comparator=None, groups=None):
    settings = EvaluationSpec(n_bootstrap=300)
    return evaluate(EvaluationInput(task="t", model_version="v", model_name="m", kind="binary", classes=["no", "yes"],
                                    y_true=y, proba=p, settings=settings, baseline_name="champion" if comparator is not None else None,
                                    baseline_proba=comparator, subgroups=groups or {}))  # fmt: skip


def _scores(rng, y, strength):
    return 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=y.size))))


def test_promotion_refuses_a_noised_candidate_and_promotes_a_better_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=800)
    champion = _scores(rng, y, 1.5)
    noisy_y = np.where(rng.random(y.size) < 0.35, 1 - y, y)  # a model that learnt from label-noised data
    noised = _scores(rng, noisy_y, 1.5)
    better = _scores(rng, y, 2.5)
    settings = PromotionSpec(slope_band=(0.0, 100.0))  # isolate the AUROC rule
    champ_metrics = _metrics(y, champion)
    refused = decide(_metrics(y, noised, champion), champ_metrics, settings)
    assert not refused.promote and any("is not non-inferior" in r for r in refused.reasons)
    promoted = decide(_metrics(y, better, champion), champ_metrics, settings)
    assert promoted.promote, promoted.reasons


def test_promotion_gate_rules():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=600)
    good = _scores(rng, y, 2.0)
    assert not decide(_metrics(y, good), None, PromotionSpec(auroc_floor=0.999)).promote  # below the floor
    assert decide(_metrics(y, good), None, PromotionSpec(auroc_floor=0.6, slope_band=(0.1, 10))).promote
    weak = _scores(rng, y, 0.5)
    overconfident = 1 / (1 + np.exp(-6 * np.log(weak / (1 - weak))))
    refused = decide(_metrics(y, overconfident), None, PromotionSpec(auroc_floor=0.6))
    assert not refused.promote and any("lies outside the band" in r for r in refused.reasons)
    pinned = decide(_metrics(y, good, good), _metrics(y, good), PromotionSpec(slope_band=(0.1, 10)), pinned=True)
    assert not pinned.promote and "pinned" in pinned.reasons[-1]
    # A subgroup whose AUROC collapses blocks promotion even when the overall AUROC holds.
    groups = {"site": np.where(np.arange(y.size) % 4 == 0, "small", "large")}
    damaged = np.where(groups["site"] == "small", rng.random(y.size), good)
    decision = decide(_metrics(y, damaged, good, groups), _metrics(y, good, None, groups),
                      PromotionSpec(margin=0.5, slope_band=(0.01, 100)))  # fmt: skip
    assert not decision.promote and any("subgroup site=small" in r for r in decision.reasons)


def test_registry_versions_are_immutable_and_rollback_pins(tmp_path, monkeypatch, capsys):
    registry = ModelRegistry(tmp_path / "models")
    for version in ("v1", "v2"):
        (registry.staging_dir("t", version) / "model").mkdir()
        registry.publish("t", version, {"decision": {"promote": True}})
    with pytest.raises(FileExistsError):
        registry.publish("t", "v1", {})
    registry.set_champion("t", "v2", "won")
    with pytest.raises(RegistryError):
        registry.set_champion("t", "v9", "unknown")
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(tmp_path))
    assert registry_cli(["pin", "t", "v1"]) == 0
    assert registry.champion("t") == {**registry.champion("t"), "version": "v1", "pinned": True}
    assert registry_cli(["list", "t"]) == 0 and "* v1" in capsys.readouterr().out
    assert registry_cli(["unpin", "t"]) == 0 and registry.champion("t")["pinned"] is False
    assert registry_cli(["pin", "t", "nope"]) == 2


def test_publish_removes_staged_versions_of_dead_runs_once_stale(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    dead, training = registry.staging_dir("t", "dead"), registry.staging_dir("t", "training")
    two_hours_ago = time.time() - 7200
    for folder in (dead, training):
        (folder / "model").mkdir()
        os.utime(folder / "model", (two_hours_ago, two_hours_ago))
        os.utime(folder, (two_hours_ago, two_hours_ago))
    (training / "model" / "checkpoint.pt").write_bytes(b"written just now")
    (registry.staging_dir("t", "v1") / "model").mkdir()
    registry.publish("t", "v1", {})
    assert not dead.exists() and training.exists()  # a fresh checkpoint inside: a run still training
    assert registry.versions("t") == ["v1"]
