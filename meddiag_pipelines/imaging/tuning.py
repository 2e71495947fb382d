"""Hyperparameter search for the imaging model, as the field does it: optuna's TPE sampler (seeded) over the
learning rate (log scale, a decade either side of the spec's), the optimiser (AdamW or SGD with Nesterov
momentum), the weight decay (log), the augmentation set and the structure (the from-scratch ResNet's width and
depth, or the backbone among the spec's list), with a median pruner on the per-epoch validation AUROC, at most
``training.trials`` trials within ``training.time_budget_s`` seconds (the trials together).

Volumes (the 3D ResNet of the volume modality) are searched the same way, over their own augmentation sets and
the convolution (3D, ACS or 2.5D).

Each trial trains in ``out_dir/trials/<n>/`` with its own checkpoint; ``out_dir/tuning.json`` (written
atomically after each trial) records the finished trials and the one in flight, so a rerun after a crash replays
the finished ones into the study and resumes the interrupted one from its checkpoint with the same settings. The
best trial is kept, not retrained: its model files are copied to ``out_dir`` with ``model.json["tuning"]``
(``{"best": {...}, "n_trials", "n_pruned", "objective", "best_value"}``) and the trial folders removed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meddiag_pipelines.atomic import atomic_write, atomic_write_json
from meddiag_pipelines.imaging.model import CONV_KINDS
from meddiag_pipelines.imaging.train import (
    MODEL_JSON,
    MODEL_PT,
    TRIALS,
    TUNING_JSON,
    ImageParams,
    ImageTrainResult,
    Kind,
    choose_width,
    default_params,
    train_image_model,
)

if TYPE_CHECKING:
    import optuna

    from meddiag_pipelines.specs import TaskSpec

log = logging.getLogger(__name__)

OBJECTIVE = "validation AUROC (macro over classes / labels), maximised"
AUGMENT_SETS = ("none", "hflip", "hflip+affine", "hflip+vflip+affine")
VOLUME_AUGMENT_SETS = ("none", "hflip+affine", "hflip+affine+intensity", "hflip+vflip+dflip+affine+intensity")
DEPTHS = {"1-1-1-1": (1, 1, 1, 1), "2-2-2-2": (2, 2, 2, 2), "3-4-6-3": (3, 4, 6, 3)}  # ResNet-10 / 18 / 34 layouts


def wants_tuning(spec: TaskSpec) -> bool:
    """Tuned when the spec asks for it, or names several backbones to choose among."""
    return spec.training.tune if spec.image is None else spec.image.tuned(spec.training)


def suggest_params(trial: optuna.Trial, spec: TaskSpec, base_width: int) -> ImageParams:
    """One point of the search space (the spec's settings are its centre)."""
    base = default_params(spec)
    lr = trial.suggest_float("learning_rate", base.learning_rate / 10, base.learning_rate * 10, log=True)
    optimizer = trial.suggest_categorical("optimizer", ["adamw", "sgd"])
    weight_decay = trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True)
    augment = trial.suggest_categorical("augment", AUGMENT_SETS if spec.volume is None else VOLUME_AUGMENT_SETS)
    params = replace(
        base,
        learning_rate=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        augment=() if augment == "none" else tuple(augment.split("+")),
    )
    backbones = spec.image.backbone_names() if spec.image is not None else []
    if backbones:
        return replace(params, backbone=trial.suggest_categorical("backbone", backbones))
    width = trial.suggest_categorical("width", sorted({max(4, base_width // 2), base_width, 2 * base_width}))
    depth = trial.suggest_categorical("depth", list(DEPTHS))
    params = replace(params, width=width, blocks=DEPTHS[depth])
    if spec.volume is not None:
        params = replace(params, conv=trial.suggest_categorical("conv", list(CONV_KINDS)))
    return params


def fit_image_model(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    kind: Kind,
    n_outputs: int,
    spec: TaskSpec,
    out_dir: Path,
    device: str,
    *,
    width: int | None = None,
    num_threads: int | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> ImageTrainResult:
    """The candidate image model: tuned (:func:`wants_tuning`) or the spec's one configuration."""
    train = _trainer(X_train, y_train, X_val, y_val, kind, n_outputs, device, width, num_threads)
    if not wants_tuning(spec):
        return train(spec, Path(out_dir), None, on_epoch_end)
    base_width = width or choose_width(len(X_train), np.shape(X_train)[-1], device, np.ndim(X_train) - 2)
    return _tune(train, spec, Path(out_dir), base_width, on_epoch_end)


def _trainer(X_train, y_train, X_val, y_val, kind, n_outputs, device, width, num_threads):
    def train(spec: TaskSpec, out: Path, params: ImageParams | None, on_epoch_end) -> ImageTrainResult:
        """``width`` (the caller's) fixes the spec's own configuration; a trial's params carry their own."""
        return train_image_model(
            X_train,
            y_train,
            X_val,
            y_val,
            kind,
            n_outputs,
            spec,
            out,
            device,
            width=width if params is None else None,
            num_threads=num_threads,
            on_epoch_end=on_epoch_end,
            params=params,
        )

    return train


def _with_budget(spec: TaskSpec, seconds: float) -> TaskSpec:
    return spec.model_copy(update={"training": spec.training.model_copy(update={"time_budget_s": max(1.0, seconds)})})


def _record_trial(frozen: optuna.trial.FrozenTrial, budget: float) -> dict:
    from optuna.distributions import distribution_to_json

    return {
        "params": frozen.params,
        "state": frozen.state.name,
        "value": frozen.value,
        "budget": budget,
        "intermediate": {str(k): v for k, v in frozen.intermediate_values.items()},
        "distributions": {k: distribution_to_json(d) for k, d in frozen.distributions.items()},
    }


def _replay(study: optuna.Study, record: dict) -> None:
    """The finished trials of an interrupted search back into a fresh study; the one in flight enqueued again."""
    import optuna
    from optuna.distributions import json_to_distribution

    for t in record["trials"]:
        study.add_trial(
            optuna.trial.create_trial(
                params=t["params"],
                value=t["value"],
                state=optuna.trial.TrialState[t["state"]],
                distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()},
                intermediate_values={int(k): v for k, v in t["intermediate"].items()},
            )
        )
    if record.get("running"):
        study.enqueue_trial(record["running"]["params"])


def _tune(train, spec: TaskSpec, out_dir: Path, base_width: int, on_epoch_end) -> ImageTrainResult:
    import optuna

    t_start = time.perf_counter()
    training = spec.training
    record_path = out_dir / TUNING_JSON
    fingerprint = {"trials": training.trials, "seed": training.seed, "spec": spec.model_dump(mode="json")}
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    if record.get("fingerprint") != fingerprint:
        record = {"fingerprint": fingerprint, "trials": [], "running": None, "elapsed": 0.0}
        shutil.rmtree(out_dir / TRIALS, ignore_errors=True)
    if record.get("result"):  # already done: the kept model is in out_dir
        return ImageTrainResult(**{**record["result"], "model_dir": out_dir})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=training.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    _replay(study, record)
    elapsed_before = float(record["elapsed"])

    def remaining() -> float:
        return training.time_budget_s - elapsed_before - (time.perf_counter() - t_start)

    def save() -> None:
        record["elapsed"] = elapsed_before + (time.perf_counter() - t_start)
        atomic_write_json(record_path, record)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, spec, base_width)
        budget = record["running"]["budget"] if record.get("running") else remaining()
        record["running"] = {"params": trial.params, "budget": budget}
        save()

        def report(epoch: int, row: dict) -> None:
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if row["val_auroc"] == row["val_auroc"]:
                trial.report(row["val_auroc"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        trial.set_user_attr("budget", budget)
        result = train(_with_budget(spec, budget), _trial_dir(out_dir, len(record["trials"])), params, report)
        return result.best_val_auroc

    def finished(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        log.info(
            "image tuning: trial %d %s, validation AUROC %s",
            len(record["trials"]),
            frozen.state.name.lower(),
            "-" if frozen.value is None else f"{frozen.value:.4f}",
        )
        if frozen.state != optuna.trial.TrialState.COMPLETE:
            shutil.rmtree(_trial_dir(out_dir, len(record["trials"])), ignore_errors=True)
        record["trials"].append(_record_trial(frozen, frozen.user_attrs.get("budget", record["running"]["budget"])))
        record["running"] = None
        save()

    left = training.trials - len(record["trials"])
    if left > 0 and remaining() > 0:
        study.optimize(objective, n_trials=left, timeout=remaining(), callbacks=[finished], catch=(ValueError,))
    return _keep_best(train, spec, out_dir, record, t_start, save)


def _trial_dir(out_dir: Path, number: int) -> Path:
    return out_dir / TRIALS / f"{number:03d}"


def _keep_best(train, spec: TaskSpec, out_dir: Path, record: dict, t_start: float, save) -> ImageTrainResult:
    """The best complete trial's model copied to ``out_dir`` with the search's summary in its model.json (its
    training is called again: it finds its finished checkpoint and returns at once). No complete trial (all
    pruned or failed, or no time): the spec's own configuration is trained in ``out_dir``."""
    complete = [(i, t) for i, t in enumerate(record["trials"]) if t["state"] == "COMPLETE" and t["value"] is not None]
    if not complete:
        log.warning("image tuning: no trial completed; training the spec's own settings")
        return train(spec, out_dir, None, None)
    number, best = max(complete, key=lambda it: it[1]["value"])
    trial_dir = _trial_dir(out_dir, number)
    params = _params_of(spec, best["params"])
    result = train(_with_budget(spec, best["budget"]), trial_dir, params, None)
    tuning = {
        "best": {**best["params"], "trial": number},
        "best_value": best["value"],
        "objective": OBJECTIVE,
        "n_trials": len(record["trials"]),
        "n_pruned": sum(t["state"] == "PRUNED" for t in record["trials"]),
    }
    config = {**result.config, "tuning": tuning}
    atomic_write(out_dir / MODEL_PT, lambda tmp: shutil.copyfile(trial_dir / MODEL_PT, tmp))
    atomic_write_json(out_dir / MODEL_JSON, config)
    result = replace(
        result,
        model_dir=out_dir,
        config=config,
        resumed_from_epoch=0,
        seconds=float(record["elapsed"]) + (time.perf_counter() - t_start),
    )
    record["result"] = {k: v for k, v in vars(result).items() if k != "model_dir"}
    save()
    shutil.rmtree(out_dir / TRIALS, ignore_errors=True)
    return result


def _params_of(spec: TaskSpec, values: dict) -> ImageParams:
    """The configuration a trial's optuna parameters stand for (replayed through a fixed trial)."""
    import optuna

    return suggest_params(optuna.trial.FixedTrial(values), spec, int(values.get("width", 1)))
