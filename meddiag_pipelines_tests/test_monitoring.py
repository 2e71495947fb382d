"""Monitoring (issue 28), as a library: the frozen reference, Evidently's drift decisions, labels that arrive later
(realised performance against an independent computation), the estimate without labels, monitoring.json and its
report, the change-control plan, and no outbound connection. SYNTHETIC data throughout."""

from __future__ import annotations

import json
import sys

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from meddiag_pipelines.evaluation.report import check_fragment
from meddiag_pipelines.monitoring.change_control import (
    HEADING,
    change_control_html,
    change_control_markdown,
    change_control_plan,
)
from meddiag_pipelines.monitoring.drift import (
    MMD_METHOD,
    NO_VALUES,
    SchemaError,
    batch_drift,
    evidently_drift,
)
from meddiag_pipelines.monitoring.estimate import estimate_performance
from meddiag_pipelines.monitoring.labels import (
    LabelsError,
    breach_checks,
    is_labels_batch,
    read_labels_batch,
    realised_performance,
)
from meddiag_pipelines.monitoring.record import (
    append_entry,
    monitoring_entry,
    monitoring_rel,
    read_monitoring,
    record_realised,
    write_monitoring_report,
)
from meddiag_pipelines.monitoring.reference import (
    REFERENCE_DIR,
    SAMPLE_ROWS,
    ReferenceError,
    build_reference,
    feature_types,
    freeze_reference,
    load_reference,
    task_feature_types,
)
from meddiag_pipelines.registry.manifest import build_manifest
from meddiag_pipelines.registry.promotion import Decision
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import EvaluationSpec, PromotionSpec, TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, run_cli
from meddiag_pipelines_tests.test_bench_smoke import run_bench

TYPES = {"age": "numeric", "bp": "numeric", "chol": "numeric", "sex": "categorical", "pain": "categorical"}
EVAL = EvaluationSpec(n_bootstrap=200)


def patients(n: int, seed: int, shift: float = 0.0) -> pl.DataFrame:
    """SYNTHETIC cases; ``shift`` moves three of the five columns (another site's population)."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "rid": [f"s{seed}-{i}" for i in range(n)],
            "age": rng.normal(55 + 8 * shift, 9, n),
            "bp": rng.normal(130 + 12 * shift, 15, n),
            "chol": rng.normal(220, 40, n),
            "sex": rng.choice(["M", "F"], n, p=[0.6, 0.4]),
            "pain": rng.choice(["ASY", "NAP", "ATA"], n, p=[0.5 - 0.3 * shift, 0.3, 0.2 + 0.3 * shift]),
        }
    )


def scored(n: int, seed: int, strength: float = 1.5) -> tuple[pl.DataFrame, np.ndarray]:
    """A prediction file's frame (``id``, ``probability``, as ``scoring`` writes it) and the true outcomes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p = 1 / (1 + np.exp(-strength * x))
    y = (rng.random(n) < p).astype(int)
    frame = pl.DataFrame(
        {
            "id": [f"c{seed}-{i}" for i in range(n)],
            "probability": p,
            "risk_band": ["low"] * n,
            "model_version": "v1",
            "batch": f"b{seed}",
        }
    )
    return frame, y


def labels_of(frame: pl.DataFrame, y: np.ndarray, classes=("0", "1")) -> pl.DataFrame:
    return pl.DataFrame({"rid": frame["id"], "outcome": [classes[v] for v in y]})


def reference(tmp_path, n_train: int = 800, embeddings: bool = False):
    train = patients(n_train, 1)
    val, y = scored(400, 2)
    val = val.with_columns(label=pl.Series([("0", "1")[v] for v in y]))
    emb = np.random.default_rng(3).normal(size=(n_train, 8)) if embeddings else None
    ref = build_reference("t", "v1", "binary", ["0", "1"], train, TYPES, val, emb)
    freeze_reference(tmp_path, ref)
    return load_reference(tmp_path)


# -- the reference ----------------------------------------------------------------------------------------------
def test_reference_statistics_cover_every_training_row_and_the_sample_is_bounded(tmp_path):
    train = patients(6_000, 1)
    ref = build_reference("t", "v1", "binary", ["0", "1"], train, TYPES)
    freeze_reference(tmp_path, ref)
    loaded = load_reference(tmp_path)
    assert loaded.meta["n_train"] == 6_000 and loaded.features.height == SAMPLE_ROWS
    assert loaded.features.columns == list(TYPES)  # no id, label or patient column
    age = loaded.meta["features"]["age"]
    assert age["quantiles"]["0.5"] == pytest.approx(float(np.median(train["age"].to_numpy())), abs=1e-9)
    assert sum(age["histogram"]["counts"]) == 6_000
    sex = loaded.meta["features"]["sex"]["frequencies"]
    assert sex["M"] == pytest.approx(train.filter(pl.col("sex") == "M").height / 6_000)


def test_a_column_without_values_in_training_is_left_unmonitored():
    train = patients(200, 1).with_columns(pl.lit(float("nan")).alias("chol"))
    ref = build_reference("t", "v1", "binary", ["0", "1"], train, TYPES)
    assert "chol" not in ref.types and ref.features.columns == ["age", "bp", "sex", "pain"]
    assert ref.meta["unmonitored"] == {"chol": "no value in the training rows"}


def test_a_frozen_reference_is_never_recomputed(tmp_path):
    first = reference(tmp_path)
    again = build_reference("t", "v1", "binary", ["0", "1"], patients(900, 9), TYPES)
    with pytest.raises(FileExistsError, match="frozen; it is never recomputed"):
        freeze_reference(tmp_path, again)
    assert load_reference(tmp_path).meta["n_train"] == first.meta["n_train"] == 800


def test_a_reference_changed_after_freezing_is_refused(tmp_path):
    reference(tmp_path)
    patients(10, 5).select(list(TYPES)).write_parquet(tmp_path / REFERENCE_DIR / "features.parquet")
    with pytest.raises(ReferenceError, match="does not match its digest in reference.json"):
        load_reference(tmp_path)


def test_feature_types_leave_out_identifier_like_text_and_follow_the_spec():
    frame = patients(300, 1).with_columns(note=pl.Series([f"free text {i}" for i in range(300)]))
    types = feature_types(frame, ["age", "sex", "note"], categorical=[])
    assert types == {"age": "numeric", "sex": "categorical"}
    spec = TaskSpec.model_validate({**SYNTHETIC_SPEC, "id": "rid", "categorical": ["bp"]})
    rows = frame.with_columns(outcome=pl.lit("yes"), pid=pl.lit("p"))
    assert task_feature_types(spec, rows) == {
        "age": "numeric",
        "bp": "categorical",
        "chol": "numeric",
        "sex": "categorical",
        "pain": "categorical",
    }


# -- drift --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_shifted_batch_drifts_and_a_same_distribution_batch_does_not(tmp_path):
    ref = reference(tmp_path)
    same = batch_drift(ref, patients(300, 11))
    other = batch_drift(ref, patients(300, 12, shift=1.0))
    assert not same["dataset_drift"] and same["n_drifted"] <= 1
    assert other["dataset_drift"] and other["share"] >= 0.5
    assert {c for c, r in other["columns"].items() if r["drifted"]} >= {"age", "bp", "pain"}
    assert other["engine"] == "evidently 0.7.23" and set(other["columns"]) == set(TYPES)


@pytest.mark.parametrize(
    ("rows", "numeric", "categorical", "binary"),
    [
        (1_000, "K-S p_value", "chi-square p_value", "Z-test p_value"),
        (1_001, "Wasserstein distance (normed)", "Jensen-Shannon distance", "Jensen-Shannon distance"),
    ],
)
def test_the_test_chosen_follows_evidentlys_rule_at_1000_reference_rows(rows, numeric, categorical, binary):
    types = {"age": "numeric", "pain": "categorical", "sex": "categorical"}
    columns = evidently_drift(patients(rows, 1), patients(200, 2), types)["columns"]
    assert [columns[c]["method"] for c in types] == [numeric, categorical, binary]


def test_a_batch_without_a_monitored_column_is_refused_naming_it(tmp_path):
    ref = reference(tmp_path)
    with pytest.raises(SchemaError, match=r"batch_0007: missing column\(s\) \['chol'\]"):
        batch_drift(ref, patients(100, 4).drop("chol"), source="batch_0007")
    with pytest.raises(SchemaError, match=r"\['bp'\] hold values that are not numbers"):
        batch_drift(ref, patients(100, 4).with_columns(pl.lit("high").alias("bp")), source="b")


def test_a_column_without_any_value_in_the_batch_counts_as_drifted(tmp_path):
    ref = reference(tmp_path)
    result = batch_drift(ref, patients(200, 4).with_columns(pl.lit(None, dtype=pl.Float64).alias("chol")))
    assert result["columns"]["chol"] == {
        "type": "numeric",
        "method": NO_VALUES,
        "threshold": None,
        "score": None,
        "drifted": True,
    }
    assert result["n_drifted"] >= 1 and result["share"] == result["n_drifted"] / 5


@pytest.mark.slow
def test_prediction_and_embedding_drift_name_their_method(tmp_path):
    ref = reference(tmp_path, embeddings=True)
    rng = np.random.default_rng(8)
    calm, _ = scored(300, 21)
    shifted = calm.with_columns(pl.col("probability") ** 4)
    quiet = batch_drift(ref, patients(300, 13), calm, rng.normal(size=(300, 8)))
    loud = batch_drift(ref, patients(300, 14), shifted, rng.normal(0.6, 1.0, size=(300, 8)))
    assert not quiet["prediction"]["dataset_drift"] and loud["prediction"]["dataset_drift"]
    assert quiet["embeddings"]["method"] == loud["embeddings"]["method"] == MMD_METHOD
    assert not quiet["embeddings"]["drifted"] and loud["embeddings"]["drifted"]
    assert loud["embeddings"]["statistic"] > quiet["embeddings"]["statistic"]


NO_NETWORK = r"""
import json, os, socket, sys
for name in ("DO_NOT_TRACK", "ITERATIVE_DO_NOT_TRACK", "EVIDENTLY_DISABLE_TELEMETRY"):
    os.environ.pop(name, None)
calls = []
def refuse(kind):
    def attempt(*args, **kwargs):
        calls.append([kind, repr(args[1] if kind == "connect" else args[0])])
        raise OSError("network refused by the test")
    return attempt
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")
import numpy as np, polars as pl
from meddiag_pipelines_tests.test_monitoring import patients, reference, scored, TYPES
from meddiag_pipelines.monitoring.drift import batch_drift
import tempfile, pathlib
ref = reference(pathlib.Path(tempfile.mkdtemp()), embeddings=True)
out = batch_drift(ref, patients(200, 12, shift=1.0), scored(200, 3)[0], np.zeros((200, 8)))
import evidently.telemetry, evidently.legacy._config
print(json.dumps({"calls": calls, "drift": out["dataset_drift"], "logger": evidently.telemetry.event_logger.enabled(),
                  "legacy": evidently.legacy._config.TELEMETRY_ENABLED, "env": os.environ.get("DO_NOT_TRACK")}))
"""


@pytest.mark.slow
def test_computing_drift_attempts_no_outbound_connection():
    """In a fresh interpreter (Evidently imported after the guard), with the switches unset beforehand: every
    connect and name lookup is recorded and refused; none may be to a non-loopback address."""
    done = run_cli([sys.executable, "-c", NO_NETWORK], timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outbound = [c for c in result["calls"] if not any(h in c[1] for h in ("127.0.0.1", "localhost", "'::1'"))]
    assert outbound == [] and result["drift"] is True
    assert result["logger"] is False and result["legacy"] is False and result["env"] == "1"


# -- labels that arrive later -------------------------------------------------------------------------------------
def test_a_labels_batch_holds_only_the_id_and_label(tmp_path):
    frame, y = scored(50, 4)
    labels_of(frame, y).write_csv(tmp_path / "labels.csv")
    assert is_labels_batch(["outcome", "rid"], "rid", "outcome")
    assert not is_labels_batch(["rid", "outcome", "age"], "rid", "outcome")
    assert read_labels_batch([tmp_path / "labels.csv"], "rid", "outcome").height == 50
    labels_of(frame, y).with_columns(age=pl.lit(3)).write_csv(tmp_path / "wide.csv")
    with pytest.raises(LabelsError, match=r"wide.csv: a labels file holds exactly the columns 'rid' and 'outcome'"):
        read_labels_batch([tmp_path / "wide.csv"], "rid", "outcome")
    pl.DataFrame({"rid": ["c4-1", "c4-1"], "outcome": ["0", "1"]}).write_csv(tmp_path / "twice.csv")
    with pytest.raises(LabelsError, match="1 id\\(s\\) are given two different labels"):
        read_labels_batch([tmp_path / "twice.csv"], "rid", "outcome")
    pl.DataFrame({"rid": ["c4-1", "c4-2"], "outcome": ["0", None]}).write_csv(tmp_path / "blank.csv")
    with pytest.raises(LabelsError, match="blank.csv: 1 row\\(s\\) have an empty id or label") as err:
        read_labels_batch([tmp_path / "blank.csv"], "rid", "outcome")
    assert "c4-" not in str(err.value)


def test_realised_auroc_matches_an_independent_computation_from_the_prediction_file(tmp_path):
    frame, y = scored(600, 5)
    frame.write_parquet(tmp_path / "v1.parquet")
    keep = np.arange(0, 600, 3)  # labels arrive for a third of the cases, plus one case scored elsewhere
    labels = labels_of(frame[keep], y[keep]).vstack(pl.DataFrame({"rid": ["elsewhere"], "outcome": ["1"]}))
    labels.write_csv(tmp_path / "labels.csv")
    predictions = pl.read_parquet(tmp_path / "v1.parquet")
    landed = read_labels_batch([tmp_path / "labels.csv"], "rid", "outcome")
    realised = realised_performance(predictions, landed, "binary", ["0", "1"], EVAL, operating_threshold=0.5)
    on_file = pl.read_parquet(tmp_path / "v1.parquet").join(
        pl.read_csv(tmp_path / "labels.csv", infer_schema=False), left_on="id", right_on="rid"
    )
    independent = roc_auc_score(on_file["outcome"].cast(pl.Int64).to_numpy(), on_file["probability"].to_numpy())
    assert abs(realised["auroc"] - independent) < 1e-9
    assert realised["n"] == 200 and realised["labels_not_in_batch"] == 1 and realised["metric"] == "auroc"
    assert realised["ci"][0] < realised["auroc"] < realised["ci"][1] and realised["calibration_slope"] is not None


def realised_of(frame: pl.DataFrame, y: np.ndarray, groups: pl.DataFrame | None = None) -> dict:
    labels = labels_of(frame, y).rename({"rid": "id", "outcome": "label"})
    return realised_performance(frame, labels, "binary", ["0", "1"], EVAL, 0.5, groups)


def test_a_realised_drop_breaches_the_gates_margins_and_a_steady_figure_does_not():
    frame, y = scored(500, 6)
    groups = pl.DataFrame({"id": frame["id"], "sex": ["M", "F"] * 250})
    steady = realised_of(frame, y, groups)
    noisy = np.where(np.random.default_rng(0).random(500) < 0.3, 1 - y, y)  # outcomes no longer follow the risks
    dropped = realised_of(frame, noisy, groups)
    version = {"auroc": steady["auroc"], "subgroups": steady["subgroups"]}
    promotion = PromotionSpec(auroc_floor=0.75, margin=0.02, max_subgroup_drop=0.05)
    calm = breach_checks(steady, version, promotion, EVAL.min_subgroup_n)
    assert calm["breach"] is False and calm["judged"] is True
    verdict = breach_checks(dropped, version, promotion, EVAL.min_subgroup_n)
    failed = [
        r for r in verdict["reasons"] if any(w in r for w in ("lies below", "is more than", "falls more", "outside"))
    ]
    assert verdict["breach"] and verdict["reasons"][: len(failed)] == failed  # the failed rules come first
    assert dropped["auroc_ci"][1] < 0.75 and steady["auroc"] - dropped["auroc_ci"][1] > 0.02  # shown at this n
    assert any("its CI lies below the floor 0.75" in r for r in failed)
    assert any("test AUROC" in r and "is more than the margin 0.02 below it" in r for r in failed)
    assert any(r.startswith("subgroup sex=") for r in failed) and any(r.startswith("calibration slope") for r in failed)


def test_a_drop_within_its_confidence_interval_is_no_breach_the_same_drop_at_a_larger_n_is():
    """The gate's 0.01 margin judged on the CI, not the point: 120 labels of a model 0.04 worse than its test
    figure do not show the drop (the point alone would breach); the same model over 3,000 labels does."""
    frame, y = scored(3000, 8)
    whole = realised_of(frame, y)
    version = {"auroc": whole["auroc"] + 0.04}
    promotion = PromotionSpec(auroc_floor=0.7, margin=0.01)
    few = realised_of(frame[:120], y[:120])
    assert version["auroc"] - few["auroc"] > promotion.margin  # the point estimate alone would call it a breach
    verdict = breach_checks(few, version, promotion, EVAL.min_subgroup_n)
    assert verdict["breach"] is False and verdict["judged"] is True
    assert "is not more than the margin 0.01 below it" in verdict["reasons"][1]
    many = breach_checks(whole, version, promotion, EVAL.min_subgroup_n)
    assert many["breach"] is True and "is more than the margin 0.01 below it" in many["reasons"][0]


@pytest.mark.parametrize(
    ("n", "outcomes", "why"),
    [
        (29, None, "too few labels to judge: n 29 < 30"),
        (40, "0", "too few labels to judge: only one outcome among the 40 labelled cases"),
    ],
)
def test_too_few_labels_are_not_judged_however_bad_they_look(n, outcomes, why):
    frame, y = scored(n, 9)
    inverted = 1 - y if outcomes is None else np.zeros(n, dtype=int)
    realised = realised_of(frame, inverted)
    verdict = breach_checks(realised, {"auroc": 0.95}, PromotionSpec(auroc_floor=0.8), EVAL.min_subgroup_n)
    assert verdict == {"breach": False, "judged": False, "reasons": [why]}


def test_at_the_minimum_n_inverted_outcomes_are_judged_and_breach():
    frame, y = scored(30, 9)
    verdict = breach_checks(realised_of(frame, 1 - y), {"auroc": 0.95}, PromotionSpec(auroc_floor=0.8), 30)
    assert verdict["judged"] is True and verdict["breach"] is True
    assert verdict["reasons"][0].endswith("its CI lies below the floor 0.8")


def test_realised_macro_f1_of_a_multiclass_task_matches_sklearn():
    rng = np.random.default_rng(7)
    proba = rng.dirichlet([2, 2, 2], size=300)
    classes = ["a", "b", "c"]
    frame = pl.DataFrame(
        {
            "id": [str(i) for i in range(300)],
            **{f"p_{c}": proba[:, i] for i, c in enumerate(classes)},
            "predicted": [classes[i] for i in proba.argmax(axis=1)],
        }
    )
    truth = np.array([rng.choice(3, p=p) for p in proba])
    labels = pl.DataFrame({"id": frame["id"], "label": [classes[i] for i in truth]})
    realised = realised_performance(frame, labels, "multiclass", classes, EVAL)
    assert realised["metric"] == "macro_f1"
    assert abs(realised["macro_f1"] - f1_score(truth, proba.argmax(axis=1), average="macro")) < 1e-9
    assert realised["ci"][0] < realised["macro_f1"] < realised["ci"][1]
    with pytest.raises(LabelsError, match="2 label\\(s\\) are not among the task's classes"):
        realised_performance(
            frame,
            labels.with_columns(
                pl.when(pl.col("id").is_in(["0", "1"])).then(pl.lit("z")).otherwise(pl.col("label")).alias("label")
            ),
            "multiclass",
            classes,
            EVAL,
        )


# -- the estimate without labels ------------------------------------------------------------------------------------
def test_the_estimate_tracks_realised_auroc_without_concept_drift_and_says_what_it_assumes(tmp_path):
    ref = reference(tmp_path)
    frame, y = scored(3_000, 9)
    estimate = estimate_performance(ref, frame, "binary", ["0", "1"])
    actual = roc_auc_score(y, frame["probability"].to_numpy())
    assert estimate["metric"] == "auroc" and abs(estimate["auroc"] - actual) < 0.03
    assert estimate["ci"][0] < estimate["auroc"] < estimate["ci"][1] and estimate["n"] == 3_000
    assert "no concept drift" in estimate["assumes"] and "assumes no concept drift" in estimate["label"]
    assert estimate_performance(ref, frame, "multilabel", ["0", "1"]) is None


# -- monitoring.json and the report --------------------------------------------------------------------------------
@pytest.mark.slow
def test_monitoring_json_appends_per_batch_and_fills_realised_when_labels_land(tmp_path):
    root = DataRoot(tmp_path)
    ref = reference(tmp_path / "v1")
    frame, y = scored(300, 21)  # predictions as the validation rows' (Evidently's KS keeps them at this seed)
    estimated = estimate_performance(ref, frame, "binary", ["0", "1"])
    calm = monitoring_entry("b1", "v1", batch_drift(ref, patients(300, 15), frame), estimated)
    moved = monitoring_entry("b2", "v1", batch_drift(ref, patients(300, 16, shift=1.0)), None)
    assert append_entry(root, "t", calm) and append_entry(root, "t", moved)
    assert append_entry(root, "t", calm) is False  # recorded already: nothing rewritten
    before = (tmp_path / monitoring_rel("t")).read_bytes()
    entries = json.loads(before)
    assert [e["batch"] for e in entries] == ["b1", "b2"] and [e["realised"] for e in entries] == [None, None]
    assert entries[0]["alerts"] == [] and entries[1]["alerts"][0]["severity"] == "WARN"
    assert {"batch", "model_version", "drift", "realised", "estimated"} <= set(entries[0])
    assert {"dataset_drift", "share", "columns"} <= set(entries[0]["drift"])
    noisy = np.where(np.random.default_rng(0).random(300) < 0.4, 1 - y, y)
    realised = realised_performance(
        frame, labels_of(frame, noisy).rename({"rid": "id", "outcome": "label"}), "binary", ["0", "1"], EVAL, 0.5
    )
    realised["breach"] = breach_checks(realised, {"auroc": 0.85}, PromotionSpec(), EVAL.min_subgroup_n)
    assert record_realised(root, "t", "b1", "v1", realised) and not record_realised(root, "t", "b9", "v1", realised)
    after = read_monitoring(root, "t")
    assert after[1] == entries[1] and after[0]["realised"]["auroc"] == pytest.approx(realised["auroc"])
    assert after[0]["realised"]["n"] == 300 and len(after[0]["realised"]["ci"]) == 2
    assert after[0]["alerts"][-1]["severity"] == "ERROR"
    html = (tmp_path / write_monitoring_report(root, "t")).read_text()
    check_fragment(html)  # nothing loaded from outside the page
    assert html.count("data:image/png;base64,") == 2 and "ERROR" in html and "assumes no concept drift" in html
    assert "c21-" not in html and "s15-" not in html  # no case id


# -- the change-control plan -----------------------------------------------------------------------------------------
def test_the_change_control_plan_states_the_gate_and_logs_every_decision(tmp_path):
    spec = TaskSpec.model_validate({**SYNTHETIC_SPEC, "promotion": {"auroc_floor": 0.75, "margin": 0.02}})
    registry = ModelRegistry(DataRoot(tmp_path))
    ledger = pl.DataFrame({"batch_id": ["batch_0001"], "content_hash": ["h"], "n_rows": [10], "status": ["validated"]})
    model = {
        "name": "xgboost",
        "framework": "xgboost",
        "params": {},
        "val_score": 0.9,
        "classes": ["no", "yes"],
        "version": "",
        "device": "cpu",
    }
    base = {"name": "lr", "framework": "sklearn", "params": {}, "val_score": 0.8}
    for version, ok, reason in (
        ("v1", True, "first model: AUROC 0.810 clears the floor 0.75"),
        ("v2", False, "AUROC | <b>worse</b> than the champion"),
    ):
        manifest = build_manifest(
            "synthetic_risk",
            ledger,
            {**model, "version": version},
            base,
            {"auroc": 0.81, "auroc_ci": [0.7, 0.9]},
            None,
            Decision(ok, [reason]).as_dict(),
            f"fp-{version}",
            "1.0",
        )
        registry.publish("synthetic_risk", version, manifest)
    registry.set_champion("synthetic_risk", "v1", "promoted")
    plan = change_control_plan(spec, registry)
    md = change_control_markdown(plan)
    assert md.startswith(f"## {HEADING}\n") and "| first model: test AUROC at least | 0.75 |" in md
    assert "non\\-inferiority margin 0.02" in md or "non-inferiority margin 0.02" in md
    assert [r["decision"] for r in plan["change_log"]] == ["promoted", "refused"] and plan["change_log"][0]["champion"]
    assert "clears the floor 0.75" in md and "<b>" not in md and "\\|" in md  # a reason cannot break the table
    html = change_control_html(plan)
    assert "&lt;b&gt;" in html and "<b>" not in html and "Sequestered test data" in html


@pytest.mark.slow
def test_bench_monitoring_smoke(tmp_path):
    lines = run_bench("monitoring", tmp_path)
    assert {line["impl"] for line in lines} >= {"cost", "site_shift", "resplit_alarms"}
