"""The Book of OHDSI's patient-level prediction exercise on Eunomia (SYNTHETIC, Synthea) through the omop
modality's own functions, repeated over split seeds: the bundled ``eunomia_gi_bleed`` spec and batch, the study
read once (the reader), the split by person with the salt ``plp-<seed>`` (the first seed: the spec's own salt),
covariates, both models (L1 logistic regression, XGBoost) and the chooser, then each model's test AUROC with its
bootstrap 95% CI. One JSON line per seed, then a summary line with the mean test AUROC of each model (the Book's
LASSO: 0.645 on a 75/25 split).

    python -m bench omop_plp [--seeds 5] [--size smoke]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from bench import REPO, emit

NAME = "omop_plp"
TASK = "eunomia_gi_bleed"
BOOK_LASSO_AUROC = 0.645


class _Storage:
    """The parts of the storage resource the modality uses (Storage protocol of modalities/base.py)."""

    def __init__(self, root: Path):
        from meddiag_pipelines.storage import DataRoot

        self.root = DataRoot(root)


def run_seed(seed: int, rows, spec, storage: _Storage, out: Path) -> dict:
    """One split salt: split, features, both models, and each model's test AUROC."""
    from meddiag_pipelines.modalities.base import TrainingRun
    from meddiag_pipelines.omop.modality import MODALITY
    from meddiag_pipelines.split import SPLIT_COLUMN, assign_split

    if seed:
        spec = spec.model_copy(update={"split": spec.split.model_copy(update={"salt": f"plp-{seed}"})})
    start = time.perf_counter()
    split = assign_split(rows, spec)
    built = MODALITY.features(spec, split, storage)
    trained = MODALITY.train_candidate(
        spec, built.frame, built.plan, TrainingRun(storage, out / f"seed{seed}", logging.getLogger(NAME))
    )
    cache_dir = str(storage.root.path(built.plan["cache_dir"]))
    handle = {"dir": str(trained.model_dir), "plan": {**built.plan, "cache_dir": cache_dir}}
    omop = MODALITY.extra_metrics(spec, handle, split)["omop"]
    models = {
        k: {"auroc": round(v["auroc"], 4), "auroc_ci": [round(x, 4) for x in v["auroc_ci"]]}
        for k, v in omop["test_auroc"].items()
    }
    params = trained.meta["params"]
    n_test = split.filter(pl.col(SPLIT_COLUMN) == "test").height
    return {
        "name": NAME,
        "seed": seed,
        "salt": spec.split.salt,
        "n_test": n_test,
        "chosen": params["chosen"],
        "lasso_C": params.get("C") if params["chosen"] == "logistic" else None,
        "n_covariates": omop["n_covariates"],
        **models,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--size", default="default", choices=("smoke", "default"))
    args = parser.parse_args(argv)
    from meddiag_pipelines.ingestion.landing import LandedBatch
    from meddiag_pipelines.omop.batches import OmopReader
    from meddiag_pipelines.specs import BATCH_COLUMN, BUNDLED_TASKS_DIR, load_spec

    spec = load_spec(BUNDLED_TASKS_DIR / f"{TASK}.yaml")
    if args.size == "smoke":
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"trials": 1})})
    seeds = 1 if args.size == "smoke" else args.seeds
    work = Path(tempfile.mkdtemp(prefix="omop_plp_"))
    try:
        batch = work / "landing" / TASK / "batch_0001"
        shutil.copytree(REPO / "data" / "landing" / TASK / "batch_0001", batch)
        rows = OmopReader()(LandedBatch(TASK, "batch_0001", batch, (), "", 0), spec)
        rows = rows.with_columns(pl.lit("batch_0001").alias(BATCH_COLUMN))
        results = [emit(run_seed(seed, rows, spec, _Storage(work), work / "models")) for seed in range(seeds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    models = ("l1_logistic_regression", "xgboost")
    means = {k: round(statistics.mean(r[k]["auroc"] for r in results), 4) for k in models}
    emit(
        {
            "name": NAME,
            "summary": True,
            "seeds": seeds,
            "mean_test_auroc": means,
            "book_lasso_auroc": BOOK_LASSO_AUROC,
            "chosen": [r["chosen"] for r in results],
        }
    )
