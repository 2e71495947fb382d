"""The tabular XGBoost's final fit on a Dask cluster (``xgboost.dask``), for training tables too large for one
step's machine to fit in good time.

What is distributed: the fit of the chosen hyper-parameters, over the full training rows split into one
partition per worker. The optuna search stays single-node, on a seeded sample of at most :data:`SEARCH_ROWS`
training rows (each trial is a short fit; a search over a cluster would pay its data transfer once per trial).
The booster comes back to the step, which saves it in the same UBJ format; nothing is pickled to disk.

When: on a Dask worker (``MEDDIAG_EXECUTOR=dask``) and the spec says ``training: {distributed: true}``, or it
leaves ``distributed`` unset and the table has at least :data:`DISTRIBUTED_MIN_ROWS` training rows (below that
the transfer costs more than the fit: bench/distributed.py). ``distributed: false`` keeps it single-node."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from functools import partial

import numpy as np
import xgboost as xgb

from meddiag_pipelines.specs import TrainingSpec

log = logging.getLogger(__name__)
DISTRIBUTED_MIN_ROWS = 1_000_000
SEARCH_ROWS = 200_000


def on_dask_worker() -> bool:
    try:
        import distributed

        distributed.get_worker()
        return True
    except (ImportError, ValueError):
        return False


def wants_cluster(settings: TrainingSpec, n_rows: int, on_cluster: bool) -> bool:
    if settings.distributed and not on_cluster:
        log.warning(
            "training.distributed is true but this step does not run on a Dask worker (MEDDIAG_EXECUTOR=dask): "
            "XGBoost trains on this machine"
        )
    if settings.distributed is not None:
        return settings.distributed and on_cluster
    return on_cluster and n_rows >= DISTRIBUTED_MIN_ROWS


@contextmanager
def cluster_fit(settings: TrainingSpec, n_rows: int):
    """The final fit on the cluster this step runs on (:func:`fit_on_cluster` with its client), or ``None``.
    ``worker_client`` frees this worker's thread while the fit runs, so the fit may use this worker too."""
    if not wants_cluster(settings, n_rows, on_dask_worker()):
        yield None
        return
    import distributed

    with distributed.worker_client() as client:
        yield partial(fit_on_cluster, client)


def search_sample(X: np.ndarray, y: np.ndarray, seed: int, rows: int = SEARCH_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``rows`` training rows, seeded, in their order: the rows the single-node search tunes on."""
    if len(y) <= rows:
        return X, y
    keep = np.sort(np.random.default_rng(seed).choice(len(y), size=rows, replace=False))
    return X[keep], y[keep]


def fit_on_cluster(
    client, params: dict, X_train, y_train, X_val, y_val, settings: TrainingSpec, feature_names: list[str]
) -> xgb.Booster:
    """``xgboost.dask.train`` with ``params`` over the rows split into one partition per worker, stopped early on
    the validation rows as the single-node fit is."""
    import dask.array as da
    import xgboost.dask as dxgb

    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))

    def partitioned(a: np.ndarray):
        chunks = (max(1, math.ceil(len(a) / n_workers)),) + a.shape[1:]
        return client.persist(da.from_array(a, chunks=chunks))

    dtrain = dxgb.DaskQuantileDMatrix(client, partitioned(X_train), partitioned(y_train), feature_names=feature_names)
    dval = dxgb.DaskDMatrix(client, partitioned(X_val), partitioned(y_val), feature_names=feature_names)
    output = dxgb.train(
        client,
        params,
        dtrain,
        num_boost_round=settings.max_rounds,
        evals=[(dval, "val")],
        early_stopping_rounds=settings.early_stopping_rounds,
        verbose_eval=False,
    )
    return output["booster"]
