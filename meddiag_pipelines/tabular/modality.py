"""The tabular modality (:class:`~meddiag_pipelines.modalities.base.Modality`): patient records read from
landed tables, the feature plan fitted on training rows, XGBoost against the logistic-regression baseline.

``candidate_model`` trains XGBoost and the logistic-regression baseline once and keeps the baseline unless
XGBoost is better by more than its uncertainty (``flat.models.choose_model``); ``baseline_model`` points at
the baseline trained in that same call.
"""

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from meddiag_pipelines import labels
from meddiag_pipelines.flat.features import FeaturePlan, fit_plan, missing_data_table, transform
from meddiag_pipelines.flat.models import (
    model_inputs,
    predict_tabular,
    read_meta,
    top_contributions,
    train_tabular_models,
)
from meddiag_pipelines.ingestion.batches import Validator
from meddiag_pipelines.modalities.base import (
    BuiltFeatures,
    Descriptions,
    Explainer,
    Modality,
    PlainReader,
    PredictorFactory,
    Storage,
    Table,
    TrainedModel,
    TrainingRun,
)
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, fold_groups, key_columns_in
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.validation.suites import CheckFailure, run_suite, tabular_expectations, validate_tabular

if TYPE_CHECKING:
    from meddiag_pipelines.registry.export import ModelExport, VersionToExport

FEATURE_PREFIX = "f__"


def feature_matrix(frame: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    columns = [c for c in frame.columns if c.startswith(FEATURE_PREFIX)]
    return frame.select(columns).to_numpy().astype(np.float32, copy=False), [c[len(FEATURE_PREFIX) :] for c in columns]


def explain_rows(model_dir, rows: pl.DataFrame, plan: dict) -> list[list[tuple[str, float]]]:
    """Per row, the features that pushed its score up most, under their reported (original) names."""
    names = FeaturePlan.from_dict(plan).reported_names()
    top = top_contributions(model_dir, model_inputs(model_dir, rows, plan))
    return [[(names.get(n, n), v) for n, v in row] for row in top]


def _tabular_predictor(plan: dict):
    def predict(model_dir, rows: pl.DataFrame) -> np.ndarray:
        return predict_tabular(model_dir, model_inputs(model_dir, rows, plan))

    return predict


def feature_table(split: pl.DataFrame, spec: TaskSpec) -> tuple[pl.DataFrame, FeaturePlan]:
    """The plan fitted on training rows, and every row's model inputs (prefixed) beside its keys and split."""
    plan = fit_plan(split.filter(pl.col(SPLIT_COLUMN) == "train"), spec)
    frame = pl.concat(
        [split.select(key_columns_in(split, spec)), transform(split, plan).rename(lambda c: FEATURE_PREFIX + c)],
        how="horizontal",
    )
    return frame, plan


def tabular_trainer(spec: TaskSpec):
    """``train_tabular_models`` (both models, one chosen) in the signature :func:`fit_model` calls."""
    return lambda *a, **kw: train_tabular_models(*a[:5], spec.training, *a[5:], **kw)


def fit_model(spec: TaskSpec, trainer, features: pl.DataFrame, out_dir) -> dict:
    """``trainer(X_train, y_train, X_val, y_val, n_classes, out_dir, feature_names, groups=...)`` on the train and
    val rows; ``groups`` keeps a patient's rows in one cross-validation fold (:func:`fold_groups`)."""
    classes = labels.class_list(spec, features)
    train = features.filter(pl.col(SPLIT_COLUMN) == "train")
    val = features.filter(pl.col(SPLIT_COLUMN) == "val")
    (X_train, names), (X_val, _) = feature_matrix(train), feature_matrix(val)
    y_train, y_val = labels.encode_labels(train[spec.label], classes), labels.encode_labels(val[spec.label], classes)
    inputs = [c for c in features.columns if c.startswith(FEATURE_PREFIX)]
    groups = fold_groups(pl.concat([train, val]), spec, inputs)
    return {**trainer(X_train, y_train, X_val, y_val, len(classes), out_dir, names, groups=groups), "classes": classes}


class TabularModality(Modality):
    name = "tabular"
    run_priority = "10"
    candidate_kinds = frozenset({"xgboost", "optuna", "scikitlearn"})
    baseline_trained_by_candidate = True

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        return Descriptions(
            raw_records="new landed batches, read once and appended to the warehouse; unreadable batches quarantined.",
            validated_records="rows of every batch that passed the Great Expectations suite built from the spec.",
            suite="The spec's GX suite over all validated rows (columns, types, label domain, ranges, null rates, "
            "unique ids across batches).",
            features=f"model inputs (imputed, indicator and one-hot columns prefixed {FEATURE_PREFIX}) beside the keys "
            "and split.",
            feature_plan="imputation and encoding fitted on training rows only.",
            candidate_model="trains XGBoost (hist; CUDA when present; early stopping and a bounded optuna search) and "
            "the logistic-regression baseline once, and keeps the baseline unless XGBoost's AUROC advantage exceeds "
            "its uncertainty (cross-validated on small data); both saved in safe formats (UBJ, JSON) in the "
            "registry's staging area.",
            baseline_model="L2 logistic regression on standardised features (C chosen on validation), the plain "
            "baseline every model is compared with; trained by candidate_model in the same call (never twice), "
            "this asset points at it.",
        )

    def reader(self, spec: TaskSpec) -> PlainReader:
        return PlainReader(read_tabular_batch)

    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        return validate_tabular

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        return run_suite(records, tabular_expectations(spec, records.columns), spec.name)

    def features(self, spec: TaskSpec, split: pl.DataFrame, storage: Storage) -> BuiltFeatures:
        name = spec.name
        frame, plan = feature_table(split, spec)
        missing = missing_data_table(split.filter(pl.col(SPLIT_COLUMN) == "train"), plan, spec.max_null_rate)
        warnings = []
        for row in missing:
            if "kept (not declared)" in row["handling"]:
                warnings.append(
                    f"{name}: column {row['feature']!r} is missing in {row['rate']:.0%} of training "
                    f"rows, over max_null_rate {spec.max_null_rate:g}; not declared, so kept with its "
                    "missingness handled (see the missing-data table)"
                )
        for column, why in plan.dropped.items():
            warnings.append(f"{name}: column {column!r} is not a feature: {why}")
        meta = {
            "n_features": len(plan.feature_names),
            "n_rows": frame.height,
            "missing_data": Table(missing),
            "dropped_columns": Table([{"column": c, "why": why} for c, why in plan.dropped.items()]),
        }
        return BuiltFeatures(frame, plan.as_dict(), meta, {"features": plan.feature_names[:50]}, warnings)

    def train_candidate(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        meta = fit_model(spec, tabular_trainer(spec), features, run.out_dir)
        run.log.info(f"{spec.name}: {meta['selection']['reason']}")
        return TrainedModel(
            run.out_dir, meta, plan, {"chosen": meta["params"]["chosen"], "selection": meta["selection"]["reason"]}
        )

    def baseline_of_candidate(self, spec: TaskSpec, candidate_dir, candidate: dict) -> TrainedModel:
        out = candidate_dir / "logistic"
        return TrainedModel(out, {**read_meta(out), "classes": candidate["classes"]}, candidate["plan"])

    def predictor_factory(self, spec: TaskSpec) -> PredictorFactory:
        return _tabular_predictor

    def explainer(self, spec: TaskSpec) -> Explainer:
        return explain_rows

    def missing_data(self, spec: TaskSpec, train_rows: pl.DataFrame, plan: dict) -> list[dict]:
        """The training rows under the candidate's stored plan."""
        return missing_data_table(train_rows, FeaturePlan.from_dict(plan), spec.max_null_rate)

    def exportable(self, version: "VersionToExport") -> "ModelExport":
        from meddiag_pipelines.tabular.export import exportable

        return exportable(version)


MODALITY = TabularModality()
