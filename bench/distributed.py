"""The tabular XGBoost fit on a Dask cluster (meddiag_pipelines.flat.distributed.fit_on_cluster) on this
machine: N rows x 50 features (SYNTHETIC), single-node ``xgb.train`` vs a local cluster of 1 and of 2 worker
processes (1 thread each), the same parameters and rounds; test AUROC for correctness, seconds for overhead.
On a 2-core machine no speed-up is expected: the figures show what the cluster costs, not what it gains.

``--size smoke|default|<rows>`` (``1m``, ``10m``...): the rows of the training table (validation and test: a fifth
each). The table is built in the client process and sent to the workers, as the pipeline's step does."""

from __future__ import annotations

import argparse
import time

from bench import emit, measure, parse_rows

NAME = "distributed"
SIZES = {"smoke": 5_000, "default": 200_000}
FEATURES, ROUNDS = 50, 30


def table(rows: int, features: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    logit = X[:, :5].sum(1) - X[:, 5] * X[:, 6] + 0.5 * rng.normal(size=rows)
    return X, (logit > 0).astype(np.int32)


def fit(rows: int, features: int, rounds: int, workers: int) -> dict:
    """``workers`` 0: single-node (all cores); else a LocalCluster of that many single-thread processes."""
    import os

    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from meddiag_pipelines.flat.distributed import fit_on_cluster
    from meddiag_pipelines.specs import TrainingSpec

    (X, y), (X_val, y_val), (X_test, y_test) = (
        table(n, features, s) for n, s in ((rows, 0), (rows // 5, 1), (rows // 5, 2))
    )
    params = {
        "tree_method": "hist",
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "max_depth": 6,
        "eta": 0.1,
        "seed": 42,
        "verbosity": 0,
    }
    settings = TrainingSpec(max_rounds=rounds, early_stopping_rounds=rounds)  # every round: the same work each way
    start = time.perf_counter()
    if workers == 0:
        dtrain, dval = xgb.QuantileDMatrix(X, label=y), xgb.DMatrix(X_val, label=y_val)
        booster = xgb.train(
            {**params, "nthread": os.cpu_count()},
            dtrain,
            num_boost_round=rounds,
            evals=[(dval, "val")],
            early_stopping_rounds=rounds,
            verbose_eval=False,
        )
        setup = 0.0
    else:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            setup = time.perf_counter() - start
            booster = fit_on_cluster(client, params, X, y, X_val, y_val, settings, [f"f{i}" for i in range(features)])
    seconds = time.perf_counter() - start
    auroc = roc_auc_score(y_test, booster.inplace_predict(X_test))
    return {
        "seconds": seconds,
        "cluster_start_s": setup,
        "test_auroc": float(auroc),
        "rounds": booster.num_boosted_rounds(),
        "rows_per_s": rows * rounds / seconds,
    }


def run(size: str = "default") -> list[dict]:
    rows = SIZES.get(size) or parse_rows(size, SIZES["smoke"])
    out = []
    for workers, impl in ((0, "single_node"), (1, "dask_1_worker"), (2, "dask_2_workers")):
        r = measure("bench.distributed:fit", {"rows": rows, "features": FEATURES, "rounds": ROUNDS, "workers": workers})
        out.append(
            emit(
                {
                    "name": NAME,
                    "impl": impl,
                    "size": size,
                    "rows": rows,
                    "features": FEATURES,
                    "workers": workers,
                    **{k: v for k, v in r.items() if k != "wall_s"},
                }
            )
        )
    return out


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench distributed")
    parser.add_argument("--size", default="default", help="smoke, default (200k rows) or rows: 1m, 10m ...")
    return run(parser.parse_args(argv).size)
