"""The asset graph of one task (group = task name), for any registered modality: raw_records ->
validated_records (+ suite) -> split -> features (+ feature_plan) -> candidate_model -> baseline_model ->
evaluation -> champion -> predictions. What differs between modalities comes from its
:class:`~meddiag_pipelines.modalities.base.Modality` (``modalities/registry.py``); this file only wires inputs,
resources, partitions, checks and metadata."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from meddiag_pipelines.defs.assets import common, ingest, lifecycle
from meddiag_pipelines.defs.assets.split import build_split_asset
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.modalities import registry
from meddiag_pipelines.modalities.base import ExtraCheck, Modality, TrainedModel, TrainingRun
from meddiag_pipelines.specs import TaskSpec


def build_task_assets(spec: TaskSpec) -> list:
    """Every asset and check of ``spec``'s task, its modality's steps wired the same way for all."""
    modality = registry.get(spec.modality)
    tags = common.asset_tags(spec)
    text = modality.descriptions(spec)
    family_report = (lambda storage: modality.family_report(spec, storage)) if spec.family else None
    raw_records = raw_records_asset(spec, modality, tags, text.raw_records)
    validated_records = ingest.build_validated_records_asset(
        spec, raw_records, tags, text.validated_records, lambda storage: modality.validator(spec, storage)
    )
    split = build_split_asset(
        spec,
        validated_records,
        tags,
        predefined=modality.predefined_split,
        finish=lambda frame: modality.finish_split(spec, frame),
        family_report=family_report,
    )
    targets = {"raw_records": raw_records, "validated_records": validated_records, "split": split[0]}
    checks = [
        suite_check(spec, modality, validated_records, text.suite),
        *(extra_check(spec, check, targets[check.asset]) for check in modality.extra_checks(spec)),
    ]
    features = features_asset(spec, modality, tags, text.features, text.feature_plan, family_report)
    candidate_model = candidate_asset(spec, modality, tags, text.candidate_model)
    baseline_model = baseline_asset(spec, modality, tags, text.baseline_model)
    downstream = lifecycle.build_model_lifecycle_assets(
        spec,
        tags,
        predictor_factory=modality.predictor_factory(spec),
        explain=modality.explainer(spec),
        embed=lambda model_dir, plan, rows: modality.embed(spec, model_dir, plan, rows),
        missing_data=lambda train_rows, plan: modality.missing_data(spec, train_rows, plan),
        card_extras=lambda candidate: modality.card_extras(spec, candidate),
        extra_metrics=lambda candidate, split: modality.extra_metrics(spec, candidate, split),
        test_sections=lambda candidate, test, proba, metrics: modality.test_sections(
            spec, candidate, test, proba, metrics
        ),
        family_report=family_report,
    )
    return [raw_records, validated_records, *checks, *split, features, candidate_model, baseline_model, *downstream]


# -- ingestion ----------------------------------------------------------------------------------------------------
def raw_records_asset(spec: TaskSpec, modality: Modality, tags: dict, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "raw_records"],
        description=f"{spec.name}: {description}",
        kinds={"duckdb", "polars"},
        pool=common.pool(spec),
        **ingest.partitioned(spec),
        **tags,
    )
    def raw_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> dg.MaterializeResult:
        reader = modality.reader(spec)
        result = ingest.ingest_partitions(context, spec, storage, reader)
        return dg.MaterializeResult(metadata={**(result.metadata or {}), **reader.metadata()})

    return raw_records


def suite_check(spec: TaskSpec, modality: Modality, validated_records, description: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=validated_records, blocking=True, **ingest.check_partitions(spec), description=description)
    def validated_records_suite(storage: MeddiagStorage, validated_records: pl.DataFrame) -> dg.AssetCheckResult:
        if validated_records.is_empty():
            return ingest.no_validated_rows_result(spec, storage)
        return common.failures_result(modality.suite(spec, validated_records))

    return validated_records_suite


def extra_check(spec: TaskSpec, check: ExtraCheck, target) -> dg.AssetChecksDefinition:
    """A modality's own check of raw_records (no input: the asset has no value), validated_records (per batch)
    or split."""
    options = {
        "name": check.name,
        "asset": target,
        "blocking": check.blocking,
        "description": check.description,
        **(ingest.check_partitions(spec) if check.asset != "split" else {}),
    }
    if check.asset == "raw_records":

        @dg.asset_check(**options)
        def run_on_batches(storage: MeddiagStorage) -> dg.AssetCheckResult:
            return common.outcome_result(check.run(storage, None))

        return run_on_batches

    @dg.asset_check(**options)
    def run_on_rows(storage: MeddiagStorage, rows: pl.DataFrame) -> dg.AssetCheckResult:
        return common.outcome_result(check.run(storage, rows))

    return run_on_rows


# -- features and models ------------------------------------------------------------------------------------------
def features_asset(
    spec: TaskSpec,
    modality: Modality,
    tags: dict,
    features: str,
    plan: str,
    family_report: Callable[[MeddiagStorage], None] | None = None,
) -> dg.AssetsDefinition:
    """``family_report``: for a task of a family, what rewrites the family's comparison (a refusal to build the
    features is recorded for it)."""

    @dg.multi_asset(
        name=f"{spec.name}__features",
        pool=common.pool(spec),
        outs=common.feature_outs(spec, tags, features, plan, modality.feature_kinds),
    )
    def features_step(context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame):
        with common.no_model_recorded(spec, storage, "features", split, family_report):
            built = modality.features(spec, split, storage)
        for warning in built.warnings:
            context.log.warning(warning)
        yield dg.Output(built.frame, output_name="features", metadata=common.ui_metadata(built.metadata))
        yield dg.Output(built.plan, output_name="feature_plan", metadata=common.ui_metadata(built.plan_metadata))

    return features_step


def training_run(
    context: dg.AssetExecutionContext, storage: MeddiagStorage, spec: TaskSpec, version: str, folder: str
) -> TrainingRun:
    """A training step of this run: its model goes into the version's staging folder, ``<version>/<folder>``."""
    out = storage.registry.staging_dir(spec.name, version) / folder
    return TrainingRun(storage, out, context.log, context.run.parent_run_id)


def trained_handle(context, storage: MeddiagStorage, spec: TaskSpec, version: str, trained: TrainedModel) -> dict:
    handle = common.model_handle(context, storage, spec, version, trained.model_dir, trained.meta, trained.plan)
    context.add_output_metadata(common.ui_metadata(trained.metadata))
    return handle


def candidate_asset(spec: TaskSpec, modality: Modality, tags: dict, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "candidate_model"],
        description=f"{spec.name}: {description}",
        kinds=set(modality.candidate_kinds),
        pool=common.pool(spec),
        op_tags=common.gpu_op_tags(spec) if modality.gpu_candidate else None,
        **tags,
    )
    def candidate_model(
        context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame, feature_plan: dict
    ) -> dict:
        version = common.run_version(context)
        trained = modality.train_candidate(
            spec, features, feature_plan, training_run(context, storage, spec, version, "model")
        )
        return trained_handle(context, storage, spec, version, trained)

    return candidate_model


def baseline_asset(spec: TaskSpec, modality: Modality, tags: dict, description: str) -> dg.AssetsDefinition:
    """The baseline trained beside the candidate (this asset points at it), or trained here from the features."""
    options = {
        "key": [spec.name, "baseline_model"],
        "description": f"{spec.name}: {description}",
        "kinds": set(modality.baseline_kinds),
        "pool": common.pool(spec),
        **tags,
    }
    if modality.baseline_trained_by_candidate:

        @dg.asset(**options)
        def baseline_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, candidate_model: dict) -> dict:
            candidate_dir = common.handle_dir(candidate_model, storage.root)
            trained = modality.baseline_of_candidate(spec, candidate_dir, candidate_model)
            return trained_handle(context, storage, spec, candidate_model["version"], trained)

        return baseline_model

    @dg.asset(**options)
    def baseline_model(
        context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame, feature_plan: dict
    ) -> dict:
        version = common.run_version(context)
        run = training_run(context, storage, spec, version, "baseline")
        return trained_handle(
            context, storage, spec, version, modality.train_baseline(spec, features, feature_plan, run)
        )

    return baseline_model
