"""The model lifecycle of every modality: evaluation, champion, predictions. A modality supplies how to score
rows with a model folder.

A version's report files (``registry.manifest.REPORT_FILES``) are written by ``evaluation`` into the version's
staging folder and published with it by ``champion``: ``models/<task>/<version>/`` keeps its own report and is
never rewritten. ``reports/<task>/latest.json`` names the latest evaluated candidate (or, when the candidate
duplicated a published version and was discarded, that version); ``reports/<task>/latest/`` is a copy of its
report for people, replaced whole (locally by a link swap; on an object store a put per file)."""

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

import meddiag_pipelines.evaluation as evaluator  # its modules load on first use
from meddiag_pipelines.atomic import atomic_write_bytes, atomic_write_json
from meddiag_pipelines.defs.assets import monitoring
from meddiag_pipelines.defs.assets.common import NUMERIC_METRICS, open_handle, png_markdown, pool, rounded
from meddiag_pipelines.defs.partitions import batch_partitions
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.batches import reconcile
from meddiag_pipelines.labels import encode_labels, task_kind
from meddiag_pipelines.markup import escape_markdown
from meddiag_pipelines.modalities.base import Embedder, Explainer, PredictorFactory
from meddiag_pipelines.registry.fingerprint import code_version, trained_batch_hashes, training_fingerprint
from meddiag_pipelines.registry.manifest import REPORT_FILES, build_manifest
from meddiag_pipelines.registry.promotion import Decision, decide
from meddiag_pipelines.scoring import prediction_frame
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines.split import COPY_OF_TRAIN_COLUMN, SPLIT_COLUMN, SPLITS
from meddiag_pipelines.validation.suites import feature_columns


def numeric_shift(frame: pl.DataFrame, spec: TaskSpec) -> list[dict]:
    columns = [c for c in feature_columns(spec, frame.columns) if c != SPLIT_COLUMN and frame.schema[c].is_numeric()]
    dev = frame.filter(pl.col(SPLIT_COLUMN).is_in(["train", "val"]))
    test = frame.filter(pl.col(SPLIT_COLUMN) == "test")

    def arrays(part: pl.DataFrame) -> dict:
        return {c: part[c].cast(pl.Float64).to_numpy() for c in columns}

    return evaluator.standardized_mean_differences(arrays(dev), arrays(test))


def _evaluation_input(
    spec: TaskSpec,
    split: pl.DataFrame,
    handle: dict,
    predict_rows: Callable,
    comparator: tuple[str, np.ndarray] | None,
    flow: dict,
    missing: list[dict],
) -> "evaluator.EvaluationInput":
    classes = handle["classes"]
    kind = task_kind(spec)
    test = split.filter(pl.col(SPLIT_COLUMN) == "test")
    val = split.filter(pl.col(SPLIT_COLUMN) == "val")
    counts = {s: split.filter(pl.col(SPLIT_COLUMN) == s).height for s in SPLITS}
    return evaluator.EvaluationInput(
        task=spec.name,
        model_version=handle["version"],
        model_name=handle["name"],
        kind=kind,
        classes=classes,
        y_true=encode_labels(test[spec.label], classes, kind),
        proba=predict_rows(handle, test),
        settings=spec.evaluation,
        n_train=counts["train"],
        n_val=counts["val"],
        n_test=counts["test"],
        val_y_true=encode_labels(val[spec.label], classes, kind),
        val_proba=predict_rows(handle, val),
        baseline_name=comparator[0] if comparator else None,
        baseline_proba=comparator[1] if comparator else None,
        subgroups={
            c: np.asarray(test[c].cast(pl.String).to_list(), dtype=object) for c in spec.subgroups if c in test.columns
        },
        flow=flow,
        missing_data=missing,
        shift=numeric_shift(split, spec),
    )


def store_version_report(storage: MeddiagStorage, task: str, version: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """Put the report files in the version's staging folder, to be published with it. A version already
    published is never rewritten: its own files are returned instead."""
    registry = storage.registry
    if registry.published(task, version):
        return version_report(storage, task, version)
    staged = registry.staging_dir(task, version)
    for filename, data in files.items():
        atomic_write_bytes(staged / filename, data)
    return files


def version_report(storage: MeddiagStorage, task: str, version: str) -> dict[str, bytes]:
    """The report files a published version keeps."""
    found = {f: storage.registry.read_file(task, version, f) for f in REPORT_FILES}
    return {f: data for f, data in found.items() if data is not None}


def point_latest(storage: MeddiagStorage, task: str, version: str, files: dict[str, bytes], **extra) -> str:
    """``reports/<task>/latest.json`` names ``version`` (its folder relative to the data root); ``latest/`` is a
    copy of its report files, replaced whole (left as it is for a version published before versions kept their
    reports). Returns the pointer's path relative to the data root."""
    reports = storage.root.relative(storage.root.reports(task))
    if files:
        storage.root.replace_files(f"{reports}/latest", files)
    pointer = {
        "task": task,
        "version": version,
        "version_dir": storage.registry.version_rel(task, version),
        "at": time.time(),
        **extra,
    }
    return storage.root.write_json(f"{reports}/latest.json", pointer)


def report_metadata(storage: MeddiagStorage, task: str, version: str) -> dict:
    """Links to a version's own report, relative to the data root (where ``champion`` publishes it)."""
    report = f"{storage.registry.version_rel(task, version)}/report.html"
    return {"report": dg.MetadataValue.path(report), "report_version": version}


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _ui_metadata(metrics: dict, plots: dict[str, bytes]) -> dict:
    meta: dict = {k: float(metrics[k]) for k in NUMERIC_METRICS if isinstance(metrics.get(k), (int, float))}
    baseline = metrics.get("baseline") or {}
    if isinstance(baseline.get("auroc"), (int, float)):
        meta["baseline_auroc"] = float(baseline["auroc"])
    meta["summary"] = dg.MetadataValue.md(evaluator.summary_markdown(metrics))
    for name in ("roc", "calibration"):
        if name in plots:
            meta[f"{name}_plot"] = png_markdown(plots[name], name)
    return meta


def flow_counts(spec: TaskSpec, storage: MeddiagStorage, split: pl.DataFrame) -> dict:
    counts = reconcile(spec, storage.warehouse)
    counts.update({s: split.filter(pl.col(SPLIT_COLUMN) == s).height for s in (*SPLITS, "score")})
    counts["unlabelled"] = counts.pop("score")
    return counts


def row_predictor(predictor_factory: PredictorFactory) -> Callable[[dict, pl.DataFrame], np.ndarray]:
    """``predict_rows(handle, rows)``: ``handle`` opened (:func:`open_handle`), its folders resolved against the
    data root."""

    def predict_rows(handle: dict, rows: pl.DataFrame) -> np.ndarray:
        return predictor_factory(handle["plan"])(Path(handle["dir"]), rows)

    return predict_rows


# -- evaluation, champion, predictions ----------------------------------------------------------------------------
def build_model_lifecycle_assets(
    spec: TaskSpec,
    tags: dict,
    predictor_factory: PredictorFactory,
    explain: Explainer | None,
    missing_data: Callable[[pl.DataFrame, dict], list[dict]],
    card_extras: Callable[[dict], list[tuple[str, str]]] | None = None,
    extra_metrics: Callable[[dict, pl.DataFrame], dict] | None = None,
    test_sections: Callable[[dict, pl.DataFrame, np.ndarray, dict], list[tuple[str, str]]] | None = None,
    family_report: Callable[[MeddiagStorage], None] | None = None,
    embed: Embedder | None = None,
) -> list:
    """``test_sections(candidate_handle, test_rows, test_proba, metrics)``: extra report sections that need the
    test split (e.g. imaging saliency over true / false positives); ``card_extras(candidate_handle)`` those
    that do not; ``family_report(storage)``: after each champion decision, the report comparing the tasks of the
    task's spec file (``spec.family``); ``embed(model_dir, plan, rows)``: the model's embeddings of rows (None:
    none), for embedding drift."""
    name = spec.name
    split_key = dg.AssetKey([name, "split"])

    predict_rows = row_predictor(predictor_factory)

    @dg.asset(
        key=[name, "evaluation"],
        ins={"split": dg.AssetIn(split_key)},
        kinds={"scikitlearn", "html"},
        description=f"{name}: the shared evaluator on the test split (TRIPOD+AI style): discrimination and "
        "calibration with CIs, decision curve, thresholds, subgroups, flow, baseline comparison. Writes "
        f"metrics.json, report.html, model_card.md and test_predictions.parquet into the candidate's version "
        f"folder (models/{name}/<version>/, published by the champion step); reports/{name}/latest.json "
        f"names this latest evaluated candidate and reports/{name}/latest/ is a copy of its report, swapped "
        "in atomically.",
        pool=pool(spec),
        **tags,
    )
    def evaluation(
        context: dg.AssetExecutionContext,
        storage: MeddiagStorage,
        split: pl.DataFrame,
        candidate_model: dict,
        baseline_model: dict,
    ) -> dict:
        metrics, plots = evaluate_candidate(
            spec,
            storage,
            split,
            candidate_model,
            baseline_model,
            predict_rows,
            missing_data,
            card_extras,
            test_sections,
            extra_metrics,
            embed,
        )
        report = report_metadata(storage, name, candidate_model["version"])
        context.add_output_metadata(rounded({**_ui_metadata(metrics, plots), **report}))
        return metrics

    @dg.asset(
        key=[name, "champion"],
        ins={"split": dg.AssetIn(split_key)},
        kinds={"python"},
        pool=pool(spec),
        description=f"{name}: champion/challenger decision on the current test set; publishes the candidate "
        f"as an immutable registry version (models/{name}/<version>/: model, plan, manifest with its decision, "
        "and its own report files) and moves champion.json when it wins. A candidate trained from the inputs "
        f"of a published version is discarded, and reports/{name}/latest.json then names that version."
        + (
            f" Then the report comparing the tasks of its spec file, in reports/{spec.family.name}/."
            if spec.family
            else ""
        ),
        **tags,
    )
    def champion(
        context: dg.AssetExecutionContext,
        storage: MeddiagStorage,
        split: pl.DataFrame,
        candidate_model: dict,
        baseline_model: dict,
        evaluation: dict,
    ) -> dict:
        value, fingerprint = decide_champion(
            spec, storage, split, candidate_model, baseline_model, evaluation, predict_rows
        )
        reasons = value["decision"]["reasons"]
        for reason in reasons:
            context.log.info(f"{name} {value['candidate']}: {reason}")
        if family_report:
            family_report(storage)
        context.add_output_metadata(
            {
                "candidate": value["candidate"],
                "published": value["published"],
                "promoted": value["decision"]["promote"],
                "champion": value["champion"] or "none",
                "fingerprint": fingerprint,
                "reasons": dg.MetadataValue.md("\n".join(f"- {escape_markdown(r)}" for r in reasons)),
                **report_metadata(storage, name, value.get("unchanged_since") or value["candidate"]),
            }
        )
        return value

    @dg.asset_check(
        asset=champion,
        blocking=True,
        description="The model in force (champion.json) exists, is "
        "published, and cleared the absolute AUROC floor (or is a pinned rollback).",
    )
    def champion_fit_for_use(storage: MeddiagStorage) -> dg.AssetCheckResult:
        return champion_check(spec, storage)

    @dg.asset(
        key=[name, "predictions"],
        ins={"split": dg.AssetIn(split_key)},
        deps=[champion],
        kinds={"parquet"},
        pool=pool(spec),
        partitions_def=batch_partitions(spec),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=monitoring.check_specs(dg.AssetKey([name, "predictions"])),
        freshness_policy=monitoring.PREDICTIONS_FRESHNESS,
        description=f"{name}: the unlabelled rows of each batch (partition) scored by the champion into "
        f"predictions/{name}/<batch>/<version>.parquet, which records the model version and the batch; a "
        "new champion adds a file beside the old ones, never replacing one. Each batch scored is watched: "
        f"drift and estimated performance, and realised performance once labels land, in "
        f"reports/{name}/monitoring.json and monitoring.html.",
        **tags,
    )
    def predictions(
        context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame
    ) -> dg.MaterializeResult:
        rows = split.filter(pl.col(SPLIT_COLUMN) == "score")
        # A run of the whole group without a partition (the task job, `dagster asset materialize`) scores every batch.
        partitioned = context.has_partition_key or context.has_partition_key_range
        batches = list(context.partition_keys) if partitioned else sorted(split[BATCH_COLUMN].unique().to_list())
        summary, watched, breached = monitoring.score_and_monitor(
            spec, storage, rows, batches, partitioned, predictor_factory, explain, embed
        )
        if summary.version in breached:
            note = f"scoring with {summary.version} stopped: its realised performance breached the gate's criteria"
        elif summary.version is None:
            note = "no champion yet: nothing scored"
        elif summary.written:
            note = f"{len(summary.written)} batch(es) scored by {summary.version}"
        elif summary.kept:
            note = f"already scored by {summary.version}: nothing rewritten"
        else:
            note = "nothing to score: no unlabelled rows"
        context.log.info(f"{name} predictions: {note}")
        return dg.MaterializeResult(
            metadata={**summary.as_metadata(), "note": note, **monitoring.monitoring_metadata(storage, name, watched)},
            check_results=monitoring.check_results(watched, breached),
        )

    return [evaluation, champion, champion_fit_for_use, predictions]


def metrics_without_copies(
    spec: TaskSpec, split: pl.DataFrame, candidate: dict, predict_rows: Callable, flow: dict
) -> dict | None:
    """Where the data's own split put copies of training rows into its test split (MedMNIST), the headline
    figures again without them, so the report shows what the copies add."""
    if COPY_OF_TRAIN_COLUMN not in split.columns:
        return None
    copy_in_test = (pl.col(SPLIT_COLUMN) == "test") & pl.col(COPY_OF_TRAIN_COLUMN).fill_null(False)
    removed = split.filter(copy_in_test).height
    if not removed:
        return None
    kept = evaluator.evaluate(
        _evaluation_input(spec, split.filter(~copy_in_test), candidate, predict_rows, None, flow, [])
    )
    return {"n_removed": removed, **{k: kept.get(k) for k in ("n_test", "auroc", "auroc_ci", "macro_f1")}}


def without_copies_html(without: dict) -> str:
    def fmt(value) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    low, high = without.get("auroc_ci") or (None, None)
    return (
        f"<p>{without['n_removed']} test rows copy a training row of the dataset's own split; without them "
        f"({without['n_test']} test rows): AUROC {fmt(without.get('auroc'))} (95% CI {fmt(low)} to {fmt(high)}), "
        f"macro-F1 {fmt(without.get('macro_f1'))}.</p>"
    )


def evaluate_candidate(
    spec: TaskSpec,
    storage: MeddiagStorage,
    split: pl.DataFrame,
    candidate_model: dict,
    baseline_model: dict,
    predict_rows: Callable,
    missing_data: Callable[[pl.DataFrame, dict], list[dict]],
    card_extras: Callable[[dict], list[tuple[str, str]]] | None = None,
    test_sections: Callable | None = None,
    extra_metrics: Callable | None = None,
    embed: Embedder | None = None,
) -> tuple[dict, dict[str, bytes]]:
    """The evaluation asset's work: the candidate's metrics and plots on the test split; its report files
    (``REPORT_FILES``) stored with the staged version, and ``reports/<task>/latest`` pointed at them."""
    name = spec.name
    candidate_model, baseline_model = (open_handle(h, storage.root) for h in (candidate_model, baseline_model))
    train_rows = split.filter(pl.col(SPLIT_COLUMN) == "train")
    test = split.filter(pl.col(SPLIT_COLUMN) == "test")
    baseline_proba = predict_rows(baseline_model, test)
    inp = _evaluation_input(
        spec,
        split,
        candidate_model,
        predict_rows,
        (baseline_model["name"], baseline_proba),
        flow_counts(spec, storage, split),
        missing_data(train_rows, candidate_model["plan"]),
    )
    metrics = evaluator.evaluate(inp)
    val = split.filter(pl.col(SPLIT_COLUMN) == "val")
    monitoring.freeze_candidate_reference(spec, storage, split, candidate_model, val, inp.val_proba, embed)
    if extra_metrics:  # the modality's own aggregates (an omop task's cohort attrition)
        metrics.update(extra_metrics(candidate_model, split))
    if candidate_model.get("selection"):  # how the candidate was chosen over the other model(s) it was trained with
        metrics["model_selection"] = candidate_model["selection"]
    plots = evaluator.render_plots(inp, metrics)
    extras = card_extras(candidate_model) if card_extras else []
    without = metrics_without_copies(spec, split, candidate_model, predict_rows, inp.flow)
    if without:
        metrics["without_copies_of_train"] = without
        extras = [*extras, ("Test split without copies of training rows", without_copies_html(without))]
    if test_sections:
        extras = [*extras, *test_sections(candidate_model, test, inp.proba, metrics)]
    card = evaluator.render_model_card(
        metrics,
        evaluator.ModelCardInfo(
            task=name,
            description=spec.description,
            intended_use="Assisted diagnosis: a second reader for clinicians, never a sole basis for a decision.",
            modality=spec.modality,
            training_data=f"{inp.n_train} training and {inp.n_val} validation rows from the landed batches "
            "listed in the model manifest.",
            model_name=candidate_model["name"],
            model_version=candidate_model["version"],
            hyperparameters=candidate_model["params"],
            limitations=[
                "Evaluated on a hash split of the same sources; external validation is needed before clinical use."
            ],
            ethical_notes=["Check the subgroup table for unequal performance before use."],
        ),
    )
    card = monitoring.card_with_plan(spec, storage, card)
    files = {
        "metrics.json": (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode(),
        "report.html": evaluator.render_report_html(metrics, plots, extras).encode(),
        "model_card.md": card.encode(),
        "test_predictions.parquet": _parquet_bytes(prediction_frame(spec, test, inp.proba, candidate_model["classes"])),
    }
    files = store_version_report(storage, name, candidate_model["version"], files)
    point_latest(storage, name, candidate_model["version"], files)
    return metrics, plots


def decide_champion(
    spec: TaskSpec,
    storage: MeddiagStorage,
    split: pl.DataFrame,
    candidate_model: dict,
    baseline_model: dict,
    evaluation: dict,
    predict_rows: Callable,
) -> tuple[dict, str]:
    """The champion asset's work: (its value, the training fingerprint). A candidate trained from the inputs of
    a published version, or of one another run is publishing, is discarded (``unchanged_since`` names that
    version); otherwise the candidate is published with its decision against the champion on the current test
    split, and promoted if it wins."""
    name, registry = spec.name, storage.registry
    version = candidate_model["version"]
    pointer = registry.champion(name)
    labelled = set(split.filter(pl.col(SPLIT_COLUMN) != "score")[BATCH_COLUMN].unique().to_list())
    fingerprint = training_fingerprint(
        trained_batch_hashes(storage.warehouse.ledger(name), labelled), spec, code_version()
    )
    same = registry.version_with_fingerprint(name, fingerprint)
    if same is not None and evaluation.get("model_version") == version:
        return unchanged_candidate(storage, name, version, same), fingerprint
    flow = flow_counts(spec, storage, split)
    candidate_vs, champion_metrics = evaluation, None
    if pointer:
        champ_rel = registry.version_rel(name, pointer["version"])
        champ_handle = open_handle(
            {
                **registry.manifest(name, pointer["version"])["model"],
                "dir": f"{champ_rel}/model",
                "plan": storage.root.read_json(f"{champ_rel}/plan.json"),
            },
            storage.root,
        )
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        champ_proba = predict_rows(champ_handle, test)
        opened = open_handle(candidate_model, storage.root)
        candidate_vs = evaluator.evaluate(
            _evaluation_input(spec, split, opened, predict_rows, ("champion", champ_proba), flow, [])
        )
        champion_metrics = evaluator.evaluate(
            _evaluation_input(spec, split, champ_handle, predict_rows, None, flow, [])
        )
    decision = decide(candidate_vs, champion_metrics, spec.promotion, pinned=bool(pointer and pointer.get("pinned")))
    holder, pointer = publish_candidate(
        spec, storage, candidate_model, baseline_model, evaluation, pointer, decision, fingerprint
    )
    if holder != version:  # a run trained from the same inputs published (or is publishing) first
        return unchanged_candidate(storage, name, version, holder), fingerprint
    return {
        "champion": pointer["version"] if pointer else None,
        "candidate": version,
        "published": True,
        "decision": decision.as_dict(),
    }, fingerprint


def unchanged_candidate(storage: MeddiagStorage, task: str, version: str, same: str) -> dict:
    """The champion value of a candidate trained from the inputs of version ``same``: discarded, never a second,
    identical version. When ``same`` won but its run died before ``champion.json`` was written, that promotion is
    finished; when another run is still publishing ``same``, that run promotes it."""
    registry = storage.registry
    registry.discard_staged(task, version)
    pointer = registry.champion(task)
    if registry.published(task, same):
        reason = f"no new data, spec or code since version {same}: nothing published"
        if pointer is None and registry.manifest(task, same)["decision"].get("promote"):
            pointer = registry.set_champion(task, same, f"promoted when published; {reason}")
        point_latest(storage, task, same, version_report(storage, task, same), unchanged_candidate=version)
    else:
        reason = f"another run is publishing version {same}, from the same data, spec and code: nothing published"
    return {
        "champion": pointer["version"] if pointer else None,
        "candidate": version,
        "published": False,
        "unchanged_since": same,
        "decision": Decision(False, [reason]).as_dict(),
    }


def publish_candidate(
    spec: TaskSpec,
    storage: MeddiagStorage,
    candidate: dict,
    baseline: dict,
    metrics: dict,
    pointer: dict | None,
    decision: Decision,
    fingerprint: str | None = None,
) -> tuple[str, dict | None]:
    """Publish the candidate as an immutable version with its plan, decision and training fingerprint
    (``registry.fingerprint``); move ``champion.json`` to it when the decision promotes it. Returns the version
    that holds these inputs (another one when it claimed them first: nothing published or promoted) and the
    champion pointer in force afterwards."""
    registry, version = storage.registry, candidate["version"]
    manifest = build_manifest(
        spec.name,
        storage.warehouse.ledger(spec.name),
        candidate,
        baseline,
        metrics,
        pointer,
        decision.as_dict(),
        fingerprint,
        code_version(),
    )
    atomic_write_json(registry.staging_dir(spec.name, version) / "plan.json", candidate["plan"])
    holder = registry.publish(spec.name, version, manifest)
    if holder == version and decision.promote:
        pointer = registry.set_champion(spec.name, version, "; ".join(decision.reasons))
    return holder, pointer


def champion_check(spec: TaskSpec, storage: MeddiagStorage) -> dg.AssetCheckResult:
    pointer = storage.registry.champion(spec.name)
    if pointer is None:
        return dg.AssetCheckResult(passed=False, description="no model has cleared the promotion gate yet")
    manifest = storage.registry.manifest(spec.name, pointer["version"])
    auroc = manifest["metrics"].get("auroc")
    ok = pointer.get("pinned") or (auroc is not None and auroc >= spec.promotion.auroc_floor)
    metadata = {"champion": pointer["version"], "auroc": float(auroc or 0), "pinned": bool(pointer.get("pinned"))}
    return dg.AssetCheckResult(passed=bool(ok), metadata=rounded(metadata))
