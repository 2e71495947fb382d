"""The asset graph of one tabular task (group = task name). Logic lives in the pure modules; this file only
wires inputs, resources and metadata.

``candidate_model`` trains XGBoost and the logistic-regression baseline once and keeps the better on
validation AUROC (as text tasks do); ``baseline_model`` points at the baseline trained in that same call.
"""

import html

import dagster as dg
import numpy as np
import polars as pl

from meddiag_pipelines.defs.assets import common, ingest
from meddiag_pipelines.defs.assets import lifecycle
from meddiag_pipelines.defs.assets.split import build_split_asset
from meddiag_pipelines import labels
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.tabular.features import FeaturePlan, fit_plan, missing_data_table, transform
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.tabular.models import (
    model_inputs,
    predict_tabular,
    read_meta,
    top_contributions,
    train_tabular_models,
)
from meddiag_pipelines.validation.suites import run_suite, tabular_expectations, validate_tabular

FEATURE_PREFIX = "f__"


def feature_matrix(frame: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    columns = [c for c in frame.columns if c.startswith(FEATURE_PREFIX)]
    return frame.select(columns).to_numpy().astype(np.float32, copy=False), [c[len(FEATURE_PREFIX):] for c in columns]


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
    frame = pl.concat([split.select(key_columns_in(split, spec)), transform(split, plan).rename(lambda c: FEATURE_PREFIX + c)], how="horizontal")
    return frame, plan


def tabular_trainer(spec: TaskSpec):
    """``train_tabular_models`` (both models, the better chosen) in the signature :func:`fit_model` calls."""
    return lambda *a: train_tabular_models(*a[:5], spec.training, *a[5:])


def model_selection_html(candidate: dict) -> str:
    """Which model won on validation and by how much (a report section)."""
    params = candidate["params"]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{params.get(f'val_auroc_{k}', float('nan')):.4f}</td></tr>"
                   for k in ("xgboost", "logistic"))  # fmt: skip
    return (f"<p>Both models were trained on the same rows; the better on the validation split became the "
            f"candidate: <b>{html.escape(str(params.get('chosen')))}</b>, by "
            f"{params.get('val_auroc_margin', float('nan')):.4f} validation AUROC (a tie goes to the baseline).</p>"
            f"<table><tr><th>model</th><th>validation AUROC</th></tr>{rows}</table>")  # fmt: skip


def card_extras(candidate: dict) -> list[tuple[str, str]]:
    return [("Model selection", model_selection_html(candidate))] if "chosen" in candidate["params"] else []


def report_missing_data(spec: TaskSpec):
    """The report's missing-data table: the training rows under the candidate's stored plan."""
    return lambda train_rows, plan: missing_data_table(train_rows, FeaturePlan.from_dict(plan), spec.max_null_rate)


def fit_model(spec: TaskSpec, trainer, features: pl.DataFrame, out_dir) -> dict:
    """``trainer(X_train, y_train, X_val, y_val, n_classes, out_dir, feature_names)`` on the train and val rows."""
    classes = labels.class_list(spec, features)
    train = features.filter(pl.col(SPLIT_COLUMN) == "train")
    val = features.filter(pl.col(SPLIT_COLUMN) == "val")
    (X_train, names), (X_val, _) = feature_matrix(train), feature_matrix(val)
    y_train, y_val = labels.encode_labels(train[spec.label], classes), labels.encode_labels(val[spec.label], classes)
    return {**trainer(X_train, y_train, X_val, y_val, len(classes), out_dir, names), "classes": classes}


def build_tabular_assets(spec: TaskSpec) -> list:
    name = spec.name
    tags = common.asset_tags(spec)

    @dg.asset(key=[name, "raw_records"], description=f"{name}: new landed batches, read once and appended to the "
              "warehouse; unreadable batches quarantined.", kinds={"duckdb", "polars"}, pool=common.pool(spec), **ingest.partitioned(spec), **tags)  # fmt: skip
    def raw_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> dg.MaterializeResult:
        return ingest.ingest_partitions(context, spec, storage, read_tabular_batch)

    validated_records = ingest.build_validated_records_asset(
        spec, raw_records, tags, "rows of every batch that passed the Great Expectations suite built from the spec.",
        lambda storage: validate_tabular)

    @dg.asset_check(asset=validated_records, blocking=True, **ingest.check_partitions(spec), description="The spec's GX suite over all validated rows "
                    "(columns, types, label domain, ranges, null rates, unique ids across batches).")  # fmt: skip
    def validated_records_suite(storage: MeddiagStorage, validated_records: pl.DataFrame) -> dg.AssetCheckResult:
        if validated_records.is_empty():
            return ingest.no_validated_rows_result(spec, storage)
        failures = run_suite(validated_records, tabular_expectations(spec, validated_records.columns), name)
        return common.failures_result(failures)

    split = build_split_asset(spec, validated_records, tags)

    @dg.multi_asset(
        name=f"{name}__features",
        pool=common.pool(spec),
        outs=common.feature_outs(spec, tags, f"model inputs (imputed, indicator and one-hot columns prefixed "
                                 f"{FEATURE_PREFIX}) beside the keys and split.",
                                 "imputation and encoding fitted on training rows only."),
    )
    def features(context: dg.AssetExecutionContext, split: pl.DataFrame):
        frame, plan = feature_table(split, spec)
        missing = missing_data_table(split.filter(pl.col(SPLIT_COLUMN) == "train"), plan, spec.max_null_rate)
        for row in missing:
            if "kept (not declared)" in row["handling"]:
                context.log.warning(f"{name}: column {row['feature']!r} is missing in {row['rate']:.0%} of training "
                                    f"rows, over max_null_rate {spec.max_null_rate:g}; not declared, so kept with its "
                                    "missingness handled (see the missing-data table)")  # fmt: skip
        for column, why in plan.dropped.items():
            context.log.warning(f"{name}: column {column!r} is not a feature: {why}")
        meta = {"n_features": len(plan.feature_names), "n_rows": frame.height,
                "missing_data": dg.MetadataValue.md(common.markdown_table(missing)),
                "dropped_columns": dg.MetadataValue.md(common.markdown_table(
                    [{"column": c, "why": why} for c, why in plan.dropped.items()]))}  # fmt: skip
        yield dg.Output(frame, output_name="features", metadata=meta)
        yield dg.Output(plan.as_dict(), output_name="feature_plan", metadata={"features": plan.feature_names[:50]})

    @dg.asset(key=[name, "candidate_model"], description=f"{name}: trains XGBoost (hist; CUDA when present; early "
              "stopping and a bounded optuna search) and the logistic-regression baseline once, and keeps the better "
              "on validation AUROC (a tie goes to the baseline); both saved in safe formats (UBJ, JSON) in the "
              "registry's staging area.", kinds={"xgboost", "optuna", "scikitlearn"}, pool=common.pool(spec),
              **tags)  # fmt: skip
    def candidate_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame,
                        feature_plan: dict) -> dict:  # fmt: skip
        version = common.run_version(context)
        out = storage.registry.staging_dir(name, version) / "model"
        meta = fit_model(spec, tabular_trainer(spec), features, out)
        params = meta["params"]
        context.log.info(f"{name}: {params['chosen']} chosen on validation AUROC (xgboost "
                         f"{params['val_auroc_xgboost']:.4f}, logistic {params['val_auroc_logistic']:.4f})")  # fmt: skip
        context.add_output_metadata(common.rounded({"chosen": params["chosen"],
                                                    "val_auroc_margin": float(params["val_auroc_margin"])}))  # fmt: skip
        return common.model_handle(context, storage, spec, version, out, meta, feature_plan)

    @dg.asset(key=[name, "baseline_model"], description=f"{name}: L2 logistic regression on standardised features "
              "(C chosen on validation), the plain baseline every model is compared with; trained by "
              "candidate_model in the same call (never twice), this asset points at it.",
              kinds={"scikitlearn"}, pool=common.pool(spec), **tags)  # fmt: skip
    def baseline_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, candidate_model: dict) -> dict:
        out = common.handle_dir(candidate_model, storage.root) / "logistic"
        meta = {**read_meta(out), "classes": candidate_model["classes"]}
        return common.model_handle(context, storage, spec, candidate_model["version"], out, meta, candidate_model["plan"])

    downstream = lifecycle.build_model_lifecycle_assets(
        spec, tags, split_asset=split, predictor_factory=_tabular_predictor,
        explain=explain_rows,
        missing_data=report_missing_data(spec),
        card_extras=card_extras,
    )  # fmt: skip
    return [raw_records, validated_records, validated_records_suite, *split, features, candidate_model,
            baseline_model, *downstream]  # fmt: skip
