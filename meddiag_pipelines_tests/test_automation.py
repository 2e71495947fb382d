"""The landing sensor and its partitions, automation conditions, the promotion decision both ways, registry and rollback."""

import json
import os
import time

import dagster as dg
import numpy as np
import pytest

from meddiag_pipelines.definitions import defs as project_defs
from meddiag_pipelines.defs import partitions
from meddiag_pipelines.defs.automation.landing import RANGE_END, RANGE_START, build_landing_sensor, downstream_condition
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.evaluation import EvaluationInput, evaluate
from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.promotion import decide
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.specs import EvaluationSpec, PromotionSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.conftest import land, synthetic_records

PARTITIONS = "synthetic_risk__batches"


def tick(sensor, storage, instance):
    """One sensor evaluation; its new partitions are added as the daemon would."""
    context = dg.build_sensor_context(instance=instance, resources={"storage": storage})
    result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requests(result) -> list[dg.RunRequest]:
    return list(result.run_requests) if isinstance(result, dg.SensorResult) else []


def ingest(spec, layout, storage, names):
    """What the requested run does to the batches (the pure per-batch functions the asset calls)."""
    from meddiag_pipelines.ingestion.batches import ingest_batches
    from meddiag_pipelines.tabular.readers import read_tabular_batch

    return ingest_batches(spec, layout, storage.warehouse, read_tabular_batch, names)


@pytest.fixture
def sensor_and_storage(synthetic_spec, layout):
    job = dg.define_asset_job("synthetic_risk_batches_job", selection=dg.AssetSelection.groups("synthetic_risk"))
    with dg.instance_for_test() as instance:
        yield build_landing_sensor(synthetic_spec, job), MeddiagStorage(data_dir=str(layout.local)), instance


def test_sensor_adds_each_new_batch_as_a_partition_and_runs_it_once(synthetic_spec, layout, sensor_and_storage):
    sensor, storage, instance = sensor_and_storage
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    land(layout, "synthetic_risk", "b2", synthetic_records(10, seed=2, start=10))
    result = tick(sensor, storage, instance)
    [add] = result.dynamic_partitions_requests
    assert add.partition_keys == ["b1", "b2"] and instance.get_dynamic_partitions(PARTITIONS) == ["b1", "b2"]
    [run] = requests(result)  # one run over the range of the new partitions
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == ("b1", "b2")
    assert run.tags["meddiag/task"] == "synthetic_risk" and run.tags["meddiag/trigger"] == "landing"
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)  # a repeated tick (run still going): nothing
    ingest(synthetic_spec, layout, storage, ["b1", "b2"])
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)
    land(layout, "synthetic_risk", "b3", synthetic_records(10, seed=3, start=20))
    [third] = requests(tick(sensor, storage, instance))
    assert (third.tags[RANGE_START], third.tags[RANGE_END]) == ("b3", "b3") and third.run_key != run.run_key


def test_a_backlog_runs_in_ranges_of_at_most_run_partitions(synthetic_spec, layout, sensor_and_storage, monkeypatch):
    """Planning a run writes one event per partition: a backlog is cut into short runs, each a range."""
    monkeypatch.setattr(partitions, "RUN_PARTITIONS", 2)
    sensor, storage, instance = sensor_and_storage
    for i in range(1, 6):
        land(layout, "synthetic_risk", f"b{i}", synthetic_records(10, seed=i, start=10 * i))
    runs = requests(tick(sensor, storage, instance))
    assert [(r.tags[RANGE_START], r.tags[RANGE_END], r.tags["meddiag/new_batches"]) for r in runs] == [
        ("b1", "b2", "2"),
        ("b3", "b4", "2"),
        ("b5", "b5", "1"),
    ]
    assert len({r.run_key for r in runs}) == 3 and instance.get_dynamic_partitions(PARTITIONS) == [
        f"b{i}" for i in range(1, 6)
    ]


def test_batches_registered_outside_the_sensor_launch_nothing(synthetic_spec, layout, sensor_and_storage):
    """After `update` registered and ingested the landing folder, starting `dagster dev` must not rerun it."""
    sensor, storage, instance = sensor_and_storage
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    instance.add_dynamic_partitions(PARTITIONS, ["b1"])
    ingest(synthetic_spec, layout, storage, ["b1"])
    assert not (layout.landing("synthetic_risk") / "b1" / "_INGESTED").exists()  # no marker: the ledger knows
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)


def test_a_batch_relanded_under_a_known_name_is_noticed(synthetic_spec, layout, sensor_and_storage):
    """Issue 14 §9: a new export under a known partition's name (a fresh folder, or files changed in place
    after ingestion) gets a run of that partition, keyed by its content, which sets the changed batch aside."""
    import shutil

    sensor, storage, instance = sensor_and_storage
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    [first] = requests(tick(sensor, storage, instance))
    ingest(synthetic_spec, layout, storage, ["b1"])
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)
    shutil.rmtree(folder)
    land(layout, "synthetic_risk", "b1", synthetic_records(12, seed=2))
    result = tick(sensor, storage, instance)
    [relanded] = requests(result)
    assert not result.dynamic_partitions_requests and relanded.partition_key == "b1"
    assert relanded.run_key.startswith("synthetic_risk:b1@") and relanded.run_key != first.run_key
    assert requests(tick(sensor, storage, instance))[0].run_key == relanded.run_key  # same content, same key
    summary = ingest(synthetic_spec, layout, storage, ["b1"])
    assert [c["batch"] for c in summary.changed] == ["b1"]
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)


def test_a_batch_name_dagster_refuses_as_a_partition_key_is_quarantined(layout, sensor_and_storage):
    sensor, storage, instance = sensor_and_storage
    land(layout, "synthetic_risk", "export...2", synthetic_records(10, seed=1))
    land(layout, "synthetic_risk", "b2", synthetic_records(10, seed=2, start=10))
    result = tick(sensor, storage, instance)
    assert instance.get_dynamic_partitions(PARTITIONS) == ["b2"]
    reason = json.loads((layout.quarantine("synthetic_risk") / "export...2" / "reason.json").read_text())
    assert "cannot use as a partition key" in reason["problem"] and reason["file"] == "export...2"
    assert [r.tags[RANGE_START] for r in requests(result)] == ["b2"]
    assert storage.warehouse.ledger("synthetic_risk")["status"].to_list() == ["quarantined"]


def test_half_written_batch_waits_for_its_marker(layout, sensor_and_storage):
    sensor, storage, instance = sensor_and_storage
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1), ready=False)
    assert isinstance(tick(sensor, storage, instance), dg.SkipReason)
    (folder / "_READY").touch()
    assert requests(tick(sensor, storage, instance))


def test_a_replayed_tick_gives_the_same_run_key(layout, sensor_and_storage):
    """A tick evaluated again before its partitions were added (a daemon restart) yields the same run_key,
    which Dagster dedupes."""
    sensor, storage, instance = sensor_and_storage
    land(layout, "synthetic_risk", "b1", synthetic_records(10, seed=1))
    context = dg.build_sensor_context(instance=instance, resources={"storage": storage})
    assert requests(sensor(context))[0].run_key == requests(sensor(context))[0].run_key


def test_sensors_are_pinned_and_the_nightly_retrain_is_a_cron_condition():
    defs = project_defs()
    assert not defs.schedules
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["breast_cancer_landing_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["heart_disease_automation"].default_status == dg.DefaultSensorStatus.RUNNING
    # One run per task at a time: the run queue limits runs by this tag (dagster_home/dagster.yaml).
    assert defs.resolve_job_def("heart_disease_batches_job").tags["meddiag/task"] == "heart_disease"
    assert sensors["heart_disease_automation"].run_tags["meddiag/task"] == "heart_disease"
    graph = defs.resolve_asset_graph()
    condition = graph.get(dg.AssetKey(["heart_disease", "candidate_model"])).automation_condition
    assert (
        "0 2 * * *" in str(condition)
        and graph.get(dg.AssetKey(["heart_disease", "raw_records"])).automation_condition is None
    )


def test_the_cron_condition_follows_the_spec_and_can_be_switched_off(synthetic_spec):
    on = synthetic_spec.model_copy(
        update={"schedule": synthetic_spec.schedule.model_copy(update={"cron": "30 3 * * 1"})}
    )
    off = synthetic_spec.model_copy(update={"schedule": synthetic_spec.schedule.model_copy(update={"enabled": False})})
    assert "30 3 * * 1" in str(downstream_condition(on))
    assert str(downstream_condition(off)) == str(dg.AutomationCondition.eager())


def _metrics(y, p, comparator=None, groups=None):
    settings = EvaluationSpec(n_bootstrap=300)
    return evaluate(
        EvaluationInput(
            task="t",
            model_version="v",
            model_name="m",
            kind="binary",
            classes=["no", "yes"],
            y_true=y,
            proba=p,
            settings=settings,
            baseline_name="champion" if comparator is not None else None,
            baseline_proba=comparator,
            subgroups=groups or {},
        )
    )


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
    assert not pinned.promote and "pinned" in pinned.reasons[0]  # the reason that decided comes first
    # A subgroup whose AUROC collapses blocks promotion even when the overall AUROC holds.
    groups = {"site": np.where(np.arange(y.size) % 4 == 0, "small", "large")}
    damaged = np.where(groups["site"] == "small", rng.random(y.size), good)
    decision = decide(
        _metrics(y, damaged, good, groups),
        _metrics(y, good, None, groups),
        PromotionSpec(margin=0.5, slope_band=(0.01, 100)),
    )
    assert not decision.promote and any("subgroup site=small" in r for r in decision.reasons)


def test_the_reason_that_decided_comes_first():
    """`update` shows a decision's first reason: the failed rule of a refusal, else the AUROC rule."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=600)
    good = _scores(rng, y, 2.0)
    overconfident = 1 / (1 + np.exp(-6 * np.log(good / (1 - good))))
    promoted = decide(_metrics(y, good), None, PromotionSpec(auroc_floor=0.6, slope_band=(0.1, 10)))
    assert promoted.promote and promoted.reasons[0].startswith("first model: AUROC") and "clears" in promoted.reasons[0]
    below = decide(_metrics(y, good), None, PromotionSpec(auroc_floor=0.999, slope_band=(0.1, 10)))
    assert not below.promote and "is below the floor 0.999" in below.reasons[0]
    miscalibrated = decide(_metrics(y, overconfident), None, PromotionSpec(auroc_floor=0.6))
    assert not miscalibrated.promote and "lies outside the band" in miscalibrated.reasons[0]
    assert "clears the floor" in miscalibrated.reasons[1]


@pytest.mark.parametrize(
    ("ci", "promote"),
    [([2.2, None], False), ([0.5, None], True), ([None, 0.9], True), ([None, 0.5], False), ([None, None], True)],
)
def test_an_open_slope_interval_is_judged_by_its_finite_bound(ci, promote):
    """A bound of None (resamples that separate their outcomes have no finite slope) is unbounded (issue 24)."""
    candidate = {"auroc": 0.99, "calibration_slope": 3.0 if ci[1] is None else 0.3, "calibration_slope_ci": ci}
    decision = decide(candidate, None, PromotionSpec(auroc_floor=0.6))
    assert decision.promote is promote, decision.reasons
    [slope] = [r for r in decision.reasons if r.startswith("calibration slope")]
    assert "inf" in slope


def test_registry_versions_are_immutable_and_rollback_pins(tmp_path, monkeypatch, capsys):
    registry = ModelRegistry(DataRoot(tmp_path))
    for version in ("v1", "v2"):
        (registry.staging_dir("t", version) / "model").mkdir()
        registry.publish("t", version, {"decision": {"promote": True}})
    with pytest.raises(FileExistsError, match="models/t/v1: already published, and a version is immutable"):
        registry.publish("t", "v1", {})
    registry.set_champion("t", "v2", "won")
    with pytest.raises(RegistryError, match="task 't' has no published version 'v9'"):
        registry.set_champion("t", "v9", "unknown")
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(tmp_path))
    assert registry_cli(["pin", "t", "v1"]) == 0
    assert registry.champion("t") == {**registry.champion("t"), "version": "v1", "pinned": True}
    assert registry_cli(["list", "t"]) == 0 and "* v1" in capsys.readouterr().out
    assert registry_cli(["unpin", "t"]) == 0 and registry.champion("t")["pinned"] is False
    assert registry_cli(["pin", "t", "nope"]) == 2


def test_publish_removes_staged_versions_of_dead_runs_once_stale(tmp_path):
    registry = ModelRegistry(DataRoot(tmp_path))
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
