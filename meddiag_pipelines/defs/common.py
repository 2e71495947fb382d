"""Wiring shared by every modality: metadata helpers, the split asset and the model lifecycle
(evaluation, champion, predictions). A modality supplies how to score rows with a model folder."""


import base64
import hashlib
import io
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from meddiag_pipelines import __version__
from meddiag_pipelines.atomic import atomic_write, atomic_write_bytes, atomic_write_json, publish_dir, staging_dir
from meddiag_pipelines.defs.resources import MeddiagStorage
import meddiag_pipelines.evaluation as evaluator  # its modules load on first use
from meddiag_pipelines.features.split import COPY_OF_TRAIN_COLUMN, SPLIT_COLUMN, SPLITS, check_split, split_by_content
from meddiag_pipelines.ingestion.batches import (IngestSummary, ValidationSummary, Validator, reconcile, validate_pending_batches,
                                                 why_no_records)  # fmt: skip
from meddiag_pipelines.ingestion.landing import BATCH_COLUMN, waiting_reason
from meddiag_pipelines.markup import escape_markdown
from meddiag_pipelines.registry.fingerprint import trained_batch_hashes, training_fingerprint
from meddiag_pipelines.registry.promotion import Decision, decide
from meddiag_pipelines.registry.store import STAGING
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.training.device import torch_device
from meddiag_pipelines.validation.suites import CheckFailure, feature_columns

# predictor_factory(plan) -> predict(model_dir, rows) -> probabilities
Predictor = Callable[[Path, pl.DataFrame], np.ndarray]
PredictorFactory = Callable[[dict], Predictor]
NUMERIC_METRICS = ("auroc", "auprc", "brier", "scaled_brier", "accuracy", "macro_f1", "calibration_slope",
                   "calibration_intercept")  # fmt: skip


# -- small helpers ------------------------------------------------------------------------------------------
def asset_tags(spec: TaskSpec) -> dict:
    return {"group_name": spec.name, "owners": [spec.owner], "tags": {"modality": spec.modality}}


def pool(spec: TaskSpec) -> str:
    """One concurrency pool per task: a sensor run and the schedule never train or publish at once."""
    return f"meddiag_{spec.name}"


def hashed_id(value: str) -> str:
    """Record ids shown in metadata or logs are hashed, never shown."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def code_version() -> str:
    """The package version, plus the git commit when git answers within 5 s (no git, no repo or a hung git:
    the version alone)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # SubprocessError: TimeoutExpired
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def run_version(context: dg.AssetExecutionContext) -> str:
    """The model version of this run: creation time of the run, then its id (sortable, unique)."""
    record = context.instance.get_run_record_by_id(context.run_id)
    created = record.create_timestamp.timestamp() if record else time.time()
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created))}-{context.run_id[:8]}"


def task_kind(spec: TaskSpec) -> str:
    """``binary`` (a ``positive`` class), ``multilabel`` (``image.multi_label``: labels are '|'-joined finding
    indices, '' = no finding) or ``multiclass``."""
    if spec.image is not None and spec.image.multi_label:
        return "multilabel"
    return "binary" if spec.is_binary else "multiclass"


def class_list(spec: TaskSpec, frame: pl.DataFrame) -> list[str]:
    """Class order used by every model: binary tasks put the positive class last; multi-label tasks list the
    findings in index order (``spec.classes``, else the indices seen)."""
    if task_kind(spec) == "multilabel":
        if spec.classes:
            return list(spec.classes)
        seen = [int(i) for v in frame[spec.label].drop_nulls().to_list() for i in str(v).split("|") if i != ""]
        return [str(i) for i in range(max(seen, default=1) + 1)]
    seen = sorted(frame[spec.label].drop_nulls().unique().to_list())
    # A declared class with no rows cannot be learnt (the split leaves out classes training lacks).
    classes = [c for c in spec.classes if spec.is_binary or c in seen] if spec.classes else seen
    if spec.is_binary:
        negatives = [c for c in classes if c != spec.positive]
        if len(negatives) != 1:
            raise ValueError(f"task {spec.name}: binary task needs exactly one negative class, found {negatives}")
        classes = [negatives[0], spec.positive]
    return classes


def encode_labels(labels: pl.Series, classes: list[str], kind: str = "multiclass") -> np.ndarray:
    """Class indices (n,); ``kind="multilabel"``: the (n, len(classes)) 0/1 indicator matrix."""
    if kind == "multilabel":
        from meddiag_pipelines.imaging.readers import multilabel_matrix

        return multilabel_matrix(labels.cast(pl.String).to_list(), len(classes)).astype(np.int64)
    codes = labels.cast(pl.String).replace_strict(classes, list(range(len(classes))), return_dtype=pl.Int64)
    if codes.null_count():
        raise ValueError(f"{labels.name}: {codes.null_count()} rows have no label to encode")
    return codes.to_numpy()


def markdown_table(rows: list[dict], limit: int = 40) -> str:
    """Rows as a Markdown table for Dagster metadata; every cell (batch and file names, problems) is escaped."""
    if not rows:
        return "_none_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(map(escape_markdown, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        cells = [f"{v:.3f}" if isinstance(v, float) else escape_markdown(v) for v in (row.get(c) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{escape_markdown(title)}](data:image/png;base64,{base64.b64encode(png).decode()})")


def failures_result(failures: list[CheckFailure]) -> dg.AssetCheckResult:
    """A check's result; the reasons are also its description, so the CLI output shows them at INFO."""
    rows = [{"column": f.column, "problem": f.problem} for f in failures]
    description = "; ".join(f"{f.column or f.expectation}: {f.problem}" for f in failures[:20]) or None
    return dg.AssetCheckResult(
        passed=not failures, severity=dg.AssetCheckSeverity.ERROR, description=description,
        metadata={"n_failures": len(failures), "failures": dg.MetadataValue.md(markdown_table(rows))},
    )  # fmt: skip


def no_records_result(spec: TaskSpec, storage: MeddiagStorage) -> dg.AssetCheckResult:
    """A suite's result when no batch has validated rows: the description says why (waiting, quarantined)."""
    return dg.AssetCheckResult(passed=False, description=why_no_records(spec, storage.layout, storage.warehouse))


# -- ingestion metadata ---------------------------------------------------------------------------------------
def ingest_result(context, spec: TaskSpec, storage: MeddiagStorage, summary: IngestSummary) -> dg.MaterializeResult:
    for q in summary.quarantined:
        context.log.warning(f"{spec.name}: batch {q['batch']} quarantined: {q['file']}: {q['problem']}")
    for c in summary.changed:
        context.log.warning(f"{spec.name}: batch {c['batch']} changed after it was ingested ({c['added']} files added, "
                            f"{c['changed']} changed, {c['removed']} removed): set aside in quarantine, its rows "
                            "already ingested stay; land the new rows as a new batch")  # fmt: skip
    waiting = [f"{b} {waiting_reason(spec.landing)}" for b in summary.waiting]
    for line in waiting:
        context.log.info(f"{spec.name}: batch {line}")
    counts = reconcile(spec, storage.warehouse)
    return dg.MaterializeResult(metadata={
        "new_batches": len(summary.ingested), "new_rows": summary.rows, "quarantined_now": len(summary.quarantined),
        "already_ingested": summary.skipped_known, "changed_batches": len(summary.changed),
        "waiting_batches": len(summary.waiting), **counts,
        "quarantined": dg.MetadataValue.md(markdown_table(summary.quarantined)),
        "changed": dg.MetadataValue.md(markdown_table(summary.changed)),
        "waiting": dg.MetadataValue.md("\n".join(f"- {line}" for line in waiting) or "_none_"),
    })  # fmt: skip


def log_validation(context, spec: TaskSpec, summary: ValidationSummary) -> None:
    for q in summary.quarantined:
        problems = "; ".join(f"{f['column'] or f['expectation']}: {f['problem']}" for f in q["failures"])
        context.log.warning(f"{spec.name}: batch {q['batch']} failed validation and was quarantined: {problems}")


def validation_metadata(spec: TaskSpec, storage: MeddiagStorage, records: pl.DataFrame, summary: ValidationSummary) -> dict:
    counts = reconcile(spec, storage.warehouse)
    labelled = records.filter(pl.col(spec.label).is_not_null()).height if spec.label in records.columns else 0
    meta = {"labelled_rows": labelled, "unlabelled_rows": records.height - labelled,
            "validated_now": len(summary.validated), "quarantined_now": len(summary.quarantined), **counts}  # fmt: skip
    if records.is_empty():
        meta["why_empty"] = why_no_records(spec, storage.layout, storage.warehouse)
    return meta


def build_validated_records_asset(spec: TaskSpec, raw_records, tags: dict, description: str,
                                  make_validator: Callable[[MeddiagStorage], Validator]):  # fmt: skip
    """The validated_records asset of any modality: validate pending batches, quarantine failures, return all
    validated rows (written to the warehouse by the IO manager). ``make_validator(storage)`` builds the
    modality's validator, which may look at earlier batches through the storage."""

    @dg.asset(key=[spec.name, "validated_records"], deps=[raw_records], io_manager_key="warehouse_io_manager",
              description=f"{spec.name}: {description}", kinds={"duckdb", "polars", "great_expectations"},
              pool=pool(spec), **tags)  # fmt: skip
    def validated_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> pl.DataFrame:
        records, summary = validate_pending_batches(spec, storage.layout, storage.warehouse, make_validator(storage))
        log_validation(context, spec, summary)
        meta = validation_metadata(spec, storage, records, summary)
        if "why_empty" in meta:
            context.log.warning(f"{spec.name}: {meta['why_empty']}")
        context.add_output_metadata(meta)
        return records

    return validated_records


# -- split ------------------------------------------------------------------------------------------------------
def warn_split_findings(context, spec: TaskSpec, findings: dict) -> None:
    """What the split handled but a person should know: conflicting labels on copies, classes too rare to learn."""
    if findings.get("conflicting_label_contents"):
        context.log.warning(f"{spec.name}: {findings['conflicting_label_contents']} contents appear with more than "
                            f"one label ({findings['conflicting_label_rows']} rows); kept, in one split each")  # fmt: skip
    if findings.get("unlearnable_classes"):
        context.log.warning(f"{spec.name}: classes with {findings['unlearnable_classes']}")


def build_split_asset(spec: TaskSpec, upstream, tags: dict, predefined: str | None = None,
                      finish: Callable[[pl.DataFrame], tuple[pl.DataFrame, dict]] | None = None) -> list:  # fmt: skip
    """The split asset of every modality. ``predefined``: a column holding the data's own split, kept where set
    (MedMNIST npz); ``finish(frame) -> (frame, metadata)``: a modality's own last step."""
    name = spec.name
    own = f", except that rows holding their dataset's own split ({predefined}) keep it" if predefined else ""

    @dg.asset(key=[name, "split"], io_manager_key="warehouse_io_manager", kinds={"polars"}, pool=pool(spec),
              description=f"{name}: train / val / test by a stable hash of {spec.patient_id or spec.id}, "
              f"with identical content (normalised text, pixels, identical feature rows) kept in one split{own}; "
              "unlabelled rows are 'score'.", **tags)  # fmt: skip
    def split(context: dg.AssetExecutionContext, validated_records: pl.DataFrame) -> dg.Output:
        frame, metadata = split_by_content(validated_records, spec, predefined)
        warn_split_findings(context, spec, metadata)
        if finish is not None:
            frame, extra = finish(frame)
            metadata = {**metadata, **extra}
        table = check_split(frame, spec)
        rows = [{"split": s, **{str(k): v for k, v in sorted(table[s].items())}} for s in SPLITS]
        counts = {f"n_{s}": int(frame.filter(pl.col(SPLIT_COLUMN) == s).height) for s in (*SPLITS, "score")}
        return dg.Output(frame, metadata={**counts, **metadata, "by_class": dg.MetadataValue.md(markdown_table(rows))})

    return [split]


# -- model handles ------------------------------------------------------------------------------------------------
def handle_dir(handle: dict) -> Path:
    """Where a handle's model lives now: its staging folder until the champion asset publishes the version,
    then the same sub-folder of ``models/<task>/<version>/`` (so re-materialising evaluation alone still works)."""
    staged = Path(handle["dir"])
    if staged.exists() or STAGING not in staged.parts:
        return staged
    cut = staged.parts.index(STAGING)
    return Path(*staged.parts[:cut], *staged.parts[cut + 1 :])


def handle_of(spec: TaskSpec, version: str, model_dir: Path, meta: dict, plan: dict) -> dict:
    """What a model asset passes on: where the weights are and how to use them (not the weights)."""
    return {"task": spec.name, "version": version, "dir": str(model_dir), "name": meta["name"],
            "framework": meta["framework"], "params": meta.get("params", {}), "val_score": meta.get("val_score"),
            "plan": plan, "classes": meta.get("classes"), "device": meta.get("device", torch_device())}  # fmt: skip


def model_handle(context, spec: TaskSpec, version: str, model_dir: Path, meta: dict, plan: dict) -> dict:
    """:func:`handle_of`, with the model's version and parameters as output metadata."""
    handle = handle_of(spec, version, model_dir, meta, plan)
    context.add_output_metadata({"version": version, "model": meta["name"], "val_score": float(meta.get("val_score") or 0),
                                 "params": dg.MetadataValue.json(meta.get("params", {}))})  # fmt: skip
    return handle


def numeric_shift(frame: pl.DataFrame, spec: TaskSpec) -> list[dict]:
    columns = [c for c in feature_columns(spec, frame.columns) if c != SPLIT_COLUMN and frame.schema[c].is_numeric()]
    dev = frame.filter(pl.col(SPLIT_COLUMN).is_in(["train", "val"]))
    test = frame.filter(pl.col(SPLIT_COLUMN) == "test")

    def arrays(part: pl.DataFrame) -> dict:
        return {c: part[c].cast(pl.Float64).to_numpy() for c in columns}

    return evaluator.standardized_mean_differences(arrays(dev), arrays(test))


def _evaluation_input(spec: TaskSpec, split: pl.DataFrame, handle: dict, predict_rows: Callable,
                      comparator: tuple[str, np.ndarray] | None, flow: dict, missing: list[dict]) -> "evaluator.EvaluationInput":  # fmt: skip
    classes = handle["classes"]
    kind = task_kind(spec)
    test = split.filter(pl.col(SPLIT_COLUMN) == "test")
    val = split.filter(pl.col(SPLIT_COLUMN) == "val")
    counts = {s: split.filter(pl.col(SPLIT_COLUMN) == s).height for s in SPLITS}
    return evaluator.EvaluationInput(
        task=spec.name, model_version=handle["version"], model_name=handle["name"],
        kind=kind, classes=classes,
        y_true=encode_labels(test[spec.label], classes, kind), proba=predict_rows(handle, test),
        settings=spec.evaluation, n_train=counts["train"], n_val=counts["val"], n_test=counts["test"],
        val_y_true=encode_labels(val[spec.label], classes, kind), val_proba=predict_rows(handle, val),
        baseline_name=comparator[0] if comparator else None, baseline_proba=comparator[1] if comparator else None,
        subgroups={c: np.asarray(test[c].cast(pl.String).to_list(), dtype=object) for c in spec.subgroups if c in test.columns},
        flow=flow, missing_data=missing, shift=numeric_shift(split, spec),
    )  # fmt: skip


def _test_predictions(spec: TaskSpec, test: pl.DataFrame, proba: np.ndarray, classes: list[str]) -> pl.DataFrame:
    base = test.select(pl.col(spec.id).cast(pl.String).alias("id"), pl.col(spec.label).alias("label"))
    if proba.ndim == 1:
        return base.with_columns(pl.Series("probability", proba.astype(np.float64)))
    cols = [pl.Series(f"p_{c}", proba[:, i].astype(np.float64)) for i, c in enumerate(classes)]
    if task_kind(spec) == "multilabel":  # one probability per finding; no single predicted class
        return base.with_columns(*cols)
    return base.with_columns(*cols, pl.Series("predicted", [classes[i] for i in proba.argmax(axis=1)]))


def _write_report(storage: MeddiagStorage, spec: TaskSpec, files: dict[str, bytes]) -> Path:
    """Build the whole report folder aside, then swap ``latest`` to it in one rename."""
    final = storage.layout.reports(spec.name) / "latest"
    staging = staging_dir(final)
    for filename, data in files.items():
        atomic_write_bytes(staging / filename, data)
    return publish_dir(staging, final)


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


# -- evaluation, champion, predictions ----------------------------------------------------------------------------
def build_model_lifecycle_assets(spec: TaskSpec, tags: dict, split_asset: list, predictor_factory: PredictorFactory,
                                 explain: Callable | None, missing_data: Callable[[pl.DataFrame, dict], list[dict]],
                                 card_extras: Callable[[dict], list[tuple[str, str]]] | None = None,
                                 test_sections: Callable[[dict, pl.DataFrame, np.ndarray, dict], list[tuple[str, str]]]
                                 | None = None) -> list:  # fmt: skip
    """``test_sections(candidate_handle, test_rows, test_proba, metrics)``: extra report sections that need the
    test split (e.g. imaging saliency over true / false positives); ``card_extras(candidate_handle)`` those
    that do not."""
    name = spec.name
    split_key = dg.AssetKey([name, "split"])

    def predict_rows(handle: dict, rows: pl.DataFrame) -> np.ndarray:
        return predictor_factory(handle["plan"])(handle_dir(handle), rows)

    @dg.asset(key=[name, "evaluation"], ins={"split": dg.AssetIn(split_key)}, kinds={"scikitlearn", "html"},
              description=f"{name}: the shared evaluator on the test split (TRIPOD+AI style): discrimination and "
              "calibration with CIs, decision curve, thresholds, subgroups, flow, baseline comparison. Writes "
              "reports/<task>/latest/ atomically.", pool=pool(spec), **tags)  # fmt: skip
    def evaluation(context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame,
                   candidate_model: dict, baseline_model: dict) -> dict:  # fmt: skip
        train_rows = split.filter(pl.col(SPLIT_COLUMN) == "train")
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        baseline_proba = predict_rows(baseline_model, test)
        inp = _evaluation_input(spec, split, candidate_model, predict_rows, (baseline_model["name"], baseline_proba),
                                flow_counts(spec, storage, split), missing_data(train_rows, candidate_model["plan"]))  # fmt: skip
        metrics = evaluator.evaluate(inp)
        plots = evaluator.render_plots(inp, metrics)
        extras = card_extras(candidate_model) if card_extras else []
        without = metrics_without_copies(spec, split, candidate_model, predict_rows, inp.flow)
        if without:
            metrics["without_copies_of_train"] = without
            extras = [*extras, ("Test split without copies of training rows", without_copies_html(without))]
        if test_sections:
            extras = [*extras, *test_sections(candidate_model, test, inp.proba, metrics)]
        card = evaluator.render_model_card(metrics, evaluator.ModelCardInfo(
            task=name, description=spec.description, intended_use="Assisted diagnosis: a second reader for "
            "clinicians, never a sole basis for a decision.", modality=spec.modality,
            training_data=f"{inp.n_train} training and {inp.n_val} validation rows from the landed batches "
            "listed in the model manifest.", model_name=candidate_model["name"], model_version=candidate_model["version"],
            hyperparameters=candidate_model["params"], limitations=["Evaluated on a hash split of the same sources; "
            "external validation is needed before clinical use."], ethical_notes=["Check the subgroup table for "
            "unequal performance before use."]))  # fmt: skip
        files = {
            "metrics.json": (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode(),
            "report.html": evaluator.render_report_html(metrics, plots, extras).encode(),
            "model_card.md": card.encode(),
            "test_predictions.parquet": _parquet_bytes(_test_predictions(spec, test, inp.proba, candidate_model["classes"])),
        }  # fmt: skip
        path = _write_report(storage, spec, files)
        context.add_output_metadata({**_ui_metadata(metrics, plots), "report": dg.MetadataValue.path(str(path / "report.html"))})
        return metrics

    @dg.asset(key=[name, "champion"], ins={"split": dg.AssetIn(split_key)}, kinds={"python"}, pool=pool(spec),
              description=f"{name}: champion/challenger decision on the current test set; publishes the candidate "
              "as an immutable registry version with its decision, and moves champion.json when it wins.", **tags)  # fmt: skip
    def champion(context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame,
                 candidate_model: dict, baseline_model: dict, evaluation: dict) -> dict:  # fmt: skip
        registry = storage.registry
        version = candidate_model["version"]
        pointer = registry.champion(name)
        labelled = set(split.filter(pl.col(SPLIT_COLUMN) != "score")[BATCH_COLUMN].unique().to_list())
        fingerprint = training_fingerprint(trained_batch_hashes(storage.warehouse.ledger(name), labelled), spec,
                                           code_version())  # fmt: skip
        same = registry.version_with_fingerprint(name, fingerprint)
        if same is not None and evaluation.get("model_version") == version:
            registry.discard_staged(name, version)  # a copy of `same`: never a second, identical version
            reason = f"no new data, spec or code since version {same}: nothing published"
            if pointer is None and registry.manifest(name, same)["decision"].get("promote"):
                # `same` won but its run died before champion.json was written: finish that promotion.
                pointer = registry.set_champion(name, same, f"promoted when published; {reason}")
            context.log.info(f"{name} {version}: {reason}")
            context.add_output_metadata({"candidate": version, "published": False, "promoted": False,
                                         "champion": pointer["version"] if pointer else "none",
                                         "fingerprint": fingerprint, "reasons": dg.MetadataValue.md(f"- {reason}")})  # fmt: skip
            return {"champion": pointer["version"] if pointer else None, "candidate": version, "published": False,
                    "unchanged_since": same, "decision": Decision(False, [reason]).as_dict()}  # fmt: skip
        if evaluation.get("model_version") != version or not (registry.task_dir(name) / ".staging" / version / "model").is_dir():
            # Asset outputs are stored per asset key: an overlapping run of this task may have replaced them.
            raise dg.Failure(f"{name}: the candidate ({version}) and its evaluation ({evaluation.get('model_version')}) "
                             "do not belong together or were already published by an overlapping run; nothing published")
        flow = flow_counts(spec, storage, split)
        candidate_vs, champion_metrics = evaluation, None
        if pointer:
            champ_dir = registry.version_dir(name, pointer["version"])
            champ_handle = {**registry.manifest(name, pointer["version"])["model"], "dir": str(champ_dir / "model"),
                            "plan": json.loads((champ_dir / "plan.json").read_text())}  # fmt: skip
            test = split.filter(pl.col(SPLIT_COLUMN) == "test")
            champ_proba = predict_rows(champ_handle, test)
            candidate_vs = evaluator.evaluate(_evaluation_input(spec, split, candidate_model, predict_rows,
                                                      ("champion", champ_proba), flow, []))  # fmt: skip
            champion_metrics = evaluator.evaluate(_evaluation_input(spec, split, champ_handle, predict_rows, None, flow, []))
        decision = decide(candidate_vs, champion_metrics, spec.promotion, pinned=bool(pointer and pointer.get("pinned")))
        pointer = publish_candidate(spec, storage, candidate_model, baseline_model, evaluation, pointer, decision,
                                    fingerprint)  # fmt: skip
        for reason in decision.reasons:
            context.log.info(f"{name} {version}: {reason}")
        context.add_output_metadata({
            "candidate": version, "published": True, "promoted": decision.promote,
            "champion": pointer["version"] if pointer else "none", "fingerprint": fingerprint,
            "reasons": dg.MetadataValue.md("\n".join(f"- {escape_markdown(r)}" for r in decision.reasons)),
        })  # fmt: skip
        return {"champion": pointer["version"] if pointer else None, "candidate": version, "published": True,
                "decision": decision.as_dict()}  # fmt: skip

    @dg.asset_check(asset=champion, blocking=True, description="The model in force (champion.json) exists, is "
                    "published, and cleared the absolute AUROC floor (or is a pinned rollback).")  # fmt: skip
    def champion_fit_for_use(storage: MeddiagStorage) -> dg.AssetCheckResult:
        return champion_check(spec, storage)

    @dg.asset(key=[name, "predictions"], ins={"split": dg.AssetIn(split_key)}, deps=[champion], kinds={"parquet"},
              pool=pool(spec),
              description=f"{name}: unlabelled rows of every batch scored by the champion into "
              "predictions/<task>/<batch>.parquet; rescored when the champion changes.", **tags)  # fmt: skip
    def predictions(context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame) -> dg.MaterializeResult:
        return score_unlabelled(context, spec, storage, split, predictor_factory, explain)

    return [evaluation, champion, champion_fit_for_use, predictions]


def metrics_without_copies(spec: TaskSpec, split: pl.DataFrame, candidate: dict, predict_rows: Callable,
                           flow: dict) -> dict | None:  # fmt: skip
    """Where the data's own split put copies of training rows into its test split (MedMNIST), the headline
    figures again without them, so the report shows what the copies add."""
    if COPY_OF_TRAIN_COLUMN not in split.columns:
        return None
    copy_in_test = (pl.col(SPLIT_COLUMN) == "test") & pl.col(COPY_OF_TRAIN_COLUMN).fill_null(False)
    removed = split.filter(copy_in_test).height
    if not removed:
        return None
    kept = evaluator.evaluate(_evaluation_input(spec, split.filter(~copy_in_test), candidate, predict_rows, None, flow, []))
    return {"n_removed": removed, **{k: kept.get(k) for k in ("n_test", "auroc", "auroc_ci", "macro_f1")}}


def without_copies_html(without: dict) -> str:
    def fmt(value) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    low, high = without.get("auroc_ci") or (None, None)
    return (f"<p>{without['n_removed']} test rows copy a training row of the dataset's own split; without them "
            f"({without['n_test']} test rows): AUROC {fmt(without.get('auroc'))} (95% CI {fmt(low)} to {fmt(high)}), "
            f"macro-F1 {fmt(without.get('macro_f1'))}.</p>")


def publish_candidate(spec: TaskSpec, storage: MeddiagStorage, candidate: dict, baseline: dict, metrics: dict,
                      pointer: dict | None, decision: Decision, fingerprint: str | None = None) -> dict | None:  # fmt: skip
    """Publish the candidate as an immutable version with its plan, decision and training fingerprint
    (``registry.fingerprint``); move ``champion.json`` to it when the decision promotes it. Returns the champion
    pointer in force afterwards."""
    registry, version = storage.registry, candidate["version"]
    manifest = _manifest(spec, storage, candidate, baseline, metrics, pointer, decision.as_dict(), fingerprint)
    atomic_write_json(registry.staging_dir(spec.name, version) / "plan.json", candidate["plan"])
    registry.publish(spec.name, version, manifest)
    if decision.promote:
        pointer = registry.set_champion(spec.name, version, "; ".join(decision.reasons))
    return pointer


def _manifest(spec, storage, candidate, baseline, metrics, parent, decision, fingerprint) -> dict:
    ledger = storage.warehouse.ledger(spec.name).filter(pl.col("status") == "validated")
    summary = {k: metrics.get(k) for k in ("auroc", "auroc_ci", "auprc", "brier", "calibration_slope",
                                            "calibration_intercept", "macro_f1", "accuracy", "n_test")}  # fmt: skip
    return {
        "task": spec.name, "created_at": time.time(), "code_version": code_version(), "fingerprint": fingerprint,
        "batches": [{"batch_id": r["batch_id"], "content_hash": r["content_hash"], "n_rows": r["n_rows"]}
                    for r in ledger.iter_rows(named=True)],
        "model": {k: candidate[k] for k in ("name", "framework", "params", "val_score", "classes", "version", "device")},
        "baseline": {k: baseline[k] for k in ("name", "framework", "params", "val_score")},
        "hyperparameters": candidate["params"], "metrics": summary,
        "thresholds": metrics.get("thresholds"), "operating_threshold": metrics.get("operating_threshold"),
        "parent_champion": parent["version"] if parent else None, "decision": decision,
    }  # fmt: skip


def champion_check(spec: TaskSpec, storage: MeddiagStorage) -> dg.AssetCheckResult:
    pointer = storage.registry.champion(spec.name)
    if pointer is None:
        return dg.AssetCheckResult(passed=False, description="no model has cleared the promotion gate yet")
    manifest = storage.registry.manifest(spec.name, pointer["version"])
    auroc = manifest["metrics"].get("auroc")
    ok = pointer.get("pinned") or (auroc is not None and auroc >= spec.promotion.auroc_floor)
    return dg.AssetCheckResult(passed=bool(ok), metadata={"champion": pointer["version"], "auroc": float(auroc or 0),
                                                          "pinned": bool(pointer.get("pinned"))})  # fmt: skip


def risk_bands(proba: np.ndarray, manifest: dict) -> list[str | None]:
    """Binary: 'high' at or above the operating threshold, 'intermediate' at or above the threshold that
    reaches the target sensitivity, else 'low'. Multi-class and multi-label tasks have no bands."""
    if proba.ndim > 1:
        return [None] * len(proba)
    rows = {r["name"]: r["threshold"] for r in manifest.get("thresholds") or []}
    high = (manifest.get("operating_threshold") or {}).get("value", 0.5)
    sensitive = min(rows.get("target_sensitivity", high), high)
    return ["high" if p >= high else "intermediate" if p >= sensitive else "low" for p in proba]


def score_unlabelled(context, spec: TaskSpec, storage: MeddiagStorage, split: pl.DataFrame,
                     predictor_factory: PredictorFactory, explain: Callable | None) -> dg.MaterializeResult:  # fmt: skip
    pointer = storage.registry.champion(spec.name)
    rows = split.filter(pl.col(SPLIT_COLUMN) == "score")
    if pointer is None or rows.is_empty():
        return dg.MaterializeResult(metadata={"scored_rows": 0, "batches_written": 0,
                                              "champion": pointer["version"] if pointer else "none"})  # fmt: skip
    version = pointer["version"]
    manifest = storage.registry.manifest(spec.name, version)
    model_dir = storage.registry.version_dir(spec.name, version) / "model"
    plan = json.loads((storage.registry.version_dir(spec.name, version) / "plan.json").read_text())
    out_dir = storage.layout.predictions(spec.name)
    written = 0
    for (batch_id,), batch_rows in rows.group_by(BATCH_COLUMN, maintain_order=True):
        target = out_dir / f"{batch_id}.parquet"
        if target.exists() and _scored_by(target) == version:
            continue  # already scored by this champion
        proba = predictor_factory(plan)(model_dir, batch_rows)
        frame = _test_predictions(spec, batch_rows.with_columns(pl.lit(None).alias(spec.label)), proba,
                                  manifest["model"]["classes"]).drop("label")  # fmt: skip
        frame = frame.with_columns(pl.Series("risk_band", risk_bands(proba, manifest), dtype=pl.String),
                                   pl.lit(version).alias("model_version"))  # fmt: skip
        if explain is not None:
            top = explain(model_dir, batch_rows, plan)
            frame = frame.with_columns(pl.Series("top_features", ["; ".join(f"{n} {v:+.3f}" for n, v in r) for r in top]))
        atomic_write(target, frame.write_parquet)
        written += 1
    return dg.MaterializeResult(metadata={"scored_rows": rows.height, "batches_written": written, "champion": version})


def _scored_by(path: Path) -> str | None:
    versions = pl.read_parquet(path, columns=["model_version"])["model_version"].unique().to_list()
    return versions[0] if len(versions) == 1 else None
