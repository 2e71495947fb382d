"""The asset graph of one imaging task (group = task name), with the same keys as a tabular task. Logic lives in
``meddiag_pipelines/imaging`` and ``imaging/validation.py``; this file only wires inputs, resources and metadata.

* raw_records        ``read_image_batch`` per landed batch (format from the spec, else detected from what landed);
                     unreadable or oversized files are quarantined one by one (the good ones flow); each record
                     carries its pixel hash and the intensity range of its one decode (for validation).
* validated_records  ``validation.images.validate_images`` per batch (GX: ids, label domain; channels, size, bit
                     depth, constant images, duplicates within / across splits); blocking check over all rows.
* split              the patient-level hash split, except that a MedMNIST npz record keeps its own split; copies
                     across that split are counted (``n_copies_*``) and marked (``_meddiag_copy_of_train``).
* features           the memory-mapped uint8 tensor cache under ``<data>/cache/<task>/`` (one file per batch,
                     rebuilt only for a new or changed batch) and a frame of the cached rows; ``feature_plan``
                     says how to find and shape them. An image whose pixels no longer match the hash validated
                     at ingestion is left out (a warning names its file; ``n_images_refused``).
* candidate_model    ResNet18Small (``imaging.train``), checkpointed every epoch in the staging folder; a
                     re-execution of a failed run resumes from its parent run's checkpoint.
* baseline_model     L2 logistic regression on the cached images average-pooled to 14 x 14 (16 x 16 for 64 /
                     128 px), pixels standardised, C chosen on validation; JSON coefficients.
* evaluation ...     the shared lifecycle; the report gains a Grad-CAM section (true / false positives, false
                     negatives of the test split; multi-class: correct and misclassified; multi-label: the true
                     positives of each finding).

Multi-label tasks (``image.multi_label``, ChestMNIST style: ``classes`` = the finding names in index order, no
``positive``; a label is the '|'-joined indices of the findings present, '' = none) run end to end: the label
domain is checked as finding indices (not as ``classes``), the split needs a positive of every finding in train,
the CNN has one sigmoid output per finding, the baseline is one-vs-rest (one pixel logistic regression per
finding, in ``baseline/label_<j>/``), the evaluation is ``kind="multilabel"`` (macro AUROC, ``per_label``), and
predictions carry one ``p_<finding>`` column per finding (no predicted class, no risk band).
"""

import base64
import html
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from meddiag_pipelines.defs.assets import common
from meddiag_pipelines.defs.assets import ingest
from meddiag_pipelines.defs.assets import lifecycle
from meddiag_pipelines.defs.assets.split import build_split_asset
from meddiag_pipelines import labels
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.imaging.preprocess import CACHE_VERSION, load_cached, update_cache
from meddiag_pipelines.imaging.readers import LABELS_CSV, ImageBatchError, read_image_batch, source_file
from meddiag_pipelines.ingestion.batches import RAW_TABLE, ReadOutcome
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import BATCH_COLUMN, LandedBatch, display_name
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.device import torch_device
from meddiag_pipelines.imaging.validation import (
    COPY_OF_TRAIN_COLUMN,
    PREDEFINED_SPLIT,
    duplicate_warnings,
    image_failures,
    mark_copies_of_train,
    split_copy_counts,
    validate_images,
)
from meddiag_pipelines.validation.suites import CheckFailure

CANDIDATE_NAME = "resnet18_small"
BASELINE_NAME = "logistic_regression_pixels"
PREDICT_CHUNK_BYTES = 1 << 28  # float32 images scored at once
SALIENCY_PER_GROUP = 4


# -- reading ------------------------------------------------------------------------------------------------------
def _to_spec_columns(frame: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """The readers name their key columns id / label / patient_id; the spine uses the spec's names."""
    renames = {canon: col for canon, col in (("id", spec.id), ("label", spec.label), ("patient_id", spec.patient_id))
               if col and col != canon and canon in frame.columns}  # fmt: skip
    return frame.rename(renames)


def read_image_records(batch: LandedBatch, spec: TaskSpec) -> ReadOutcome:
    """Reader for ``ingest_new_batches``: records in the spec's column names (with the intensity range of each
    image, decoded once by the reader); every file that does not read is a per-file rejection."""
    try:
        result = read_image_batch(batch.path, spec)
    except ImageBatchError as exc:
        raise BatchRejected(LABELS_CSV if str(exc).startswith(LABELS_CSV) else batch.batch_id, str(exc)) from exc
    used = {source_file(source, spec.image.format) for source in result.records["source"].to_list()}
    problems: dict[str, list[str]] = {}
    for rel, problem in result.rejected:
        if rel in used:
            continue  # e.g. a repeated labels.csv row naming a file that a kept record uses: the file stays
        problems.setdefault(rel, []).append(problem)
    rejected = [(rel, "; ".join(dict.fromkeys(p))) for rel, p in problems.items()]
    return ReadOutcome(_to_spec_columns(result.records, spec), rejected)


def _mark_official_copies(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Copies across a dataset's own split are marked and counted (validation blocks any copies of ours)."""
    predefined = int(frame[PREDEFINED_SPLIT].is_not_null().sum()) if PREDEFINED_SPLIT in frame.columns else 0
    copies = {f"n_copies_{k}": v for k, v in split_copy_counts(frame).items()}
    return mark_copies_of_train(frame), {"n_predefined_split": predefined, **copies}


# -- features: the tensor cache -----------------------------------------------------------------------------------
def _log_refused(context, batch_id: str, records: pl.DataFrame, failed: list[list[str]]) -> set[str]:
    """Warn, per file (never per id), about the images the cache refused; their ids, to leave them out."""
    ids = {f[0] for f in failed}
    source_of = dict(zip(records["id"].to_list(), records["source"].to_list(), strict=True))
    for record_id, problem in failed:
        context.log.warning(f"batch {display_name(batch_id)}: image {source_of.get(record_id, '?')} left out of "
                            f"training: {problem}")  # fmt: skip
    return ids


def _cache_records(rows: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """One batch's rows as the cache wants them, in a stable order (the cache fingerprint depends on it)."""
    return rows.select(pl.col(spec.id).cast(pl.String).alias("id"), "source", "sha256").sort("id")


def baseline_side(size: int) -> int:
    return 14 if size % 14 == 0 else 16


def pooled_pixels(X: np.ndarray, side: int) -> np.ndarray:
    """(n, C, S, S) -> (n, C * side * side) by average pooling over S / side blocks."""
    n, c, s, _ = X.shape
    k = s // side
    return X.reshape(n, c, side, k, side, k).mean(axis=(3, 5)).reshape(n, c * side * side)


def multilabel_domain_failures(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Multi-label labels must be '' or '|'-joined finding indices within ``spec.classes`` (when given)."""
    if spec.label not in frame.columns:
        return []
    k = len(spec.classes) if spec.classes else None
    bad = 0
    for value in frame[spec.label].drop_nulls().cast(pl.String).to_list():
        parts = value.split("|") if value else []
        if not all(x.isdigit() and (k is None or int(x) < k) for x in parts):
            bad += 1
    if not bad:
        return []
    return [CheckFailure("multilabel_label_domain", spec.label, f"{bad} labels are not '|'-joined finding indices "
                         f"{'below ' + str(k) if k else ''}".rstrip(), bad)]  # fmt: skip


def _validation_spec(spec: TaskSpec) -> TaskSpec:
    """Multi-label ``classes`` name the findings, not label values: GX must not check the label against them."""
    return spec.model_copy(update={"classes": None}) if labels.task_kind(spec) == "multilabel" else spec


def _predictor_factory(spec: TaskSpec):
    def factory(plan: dict):
        from meddiag_pipelines.imaging.train import predict_image_model
        from meddiag_pipelines.tabular.models import predict_tabular

        cache_dir = Path(plan["cache_dir"])
        per_image = 4 * int(plan["channels"]) * int(plan["size"]) ** 2
        chunk = max(256, PREDICT_CHUNK_BYTES // per_image)
        k = len(plan.get("classes") or []) or 2
        multilabel = labels.task_kind(spec) == "multilabel"

        def predict(model_dir: Path, rows: pl.DataFrame) -> np.ndarray:
            ids = rows[spec.id].cast(pl.String).to_list()
            parts = []
            for start in range(0, len(ids), chunk):
                X = load_cached(cache_dir, ids[start : start + chunk])
                if plan.get("predictor") == "pixel_logistic":
                    p = predict_tabular(Path(model_dir), pooled_pixels(X, int(plan["baseline_side"])))
                elif plan.get("predictor") == "pixel_logistic_ovr":  # multi-label: one model per finding
                    pooled = pooled_pixels(X, int(plan["baseline_side"]))
                    p = np.stack([predict_tabular(Path(model_dir) / f"label_{j}", pooled) for j in range(k)], axis=1)
                else:
                    p = predict_image_model(Path(model_dir), X, device=torch_device())
                if not spec.is_binary and not multilabel and p.ndim == 1:  # two-class multi-class, binary model
                    p = np.stack([1.0 - p, p], axis=1)
                parts.append(np.asarray(p, dtype=np.float64))
            if not parts:
                return np.empty((0,) if spec.is_binary else (0, k))
            return np.concatenate(parts)

        return predict

    return factory


# -- report: saliency ---------------------------------------------------------------------------------------------
def _png_img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" style="max-width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def saliency_sections(spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict,
                      log=None) -> list[tuple[str, str]]:  # fmt: skip
    """Grad-CAM over a seeded sample of the test split: true positives, false positives and false negatives at the
    operating threshold (binary), or correct and misclassified images (multi-class). No ids are shown."""
    from meddiag_pipelines.imaging.saliency import grad_cam, saliency_panel_png

    title = "Saliency (Grad-CAM)"
    try:
        classes = candidate["classes"]
        kind = labels.task_kind(spec)
        y = labels.encode_labels(test[spec.label], classes, kind)
        rng = np.random.default_rng(spec.evaluation.seed)
        targets: list[int | None] = []
        if kind == "multilabel":
            per_label = metrics.get("per_label") or []
            cuts = [float((r.get("operating_threshold") or {}).get("value", 0.5)) for r in per_label]
            cuts = cuts or [0.5] * len(classes)
            groups = [(f"True positives: {c}", (y[:, j] == 1) & (proba[:, j] >= cuts[j])) for j, c in enumerate(classes)]
            targets = list(range(len(classes)))
            scores = proba
            note = "Per finding at its operating threshold; the heat map is the evidence for that finding."
        elif proba.ndim == 1:
            threshold = float((metrics.get("operating_threshold") or {}).get("value", 0.5))
            pred = proba >= threshold
            groups = [("True positives", (y == 1) & pred), ("False positives", (y == 0) & pred),
                      ("False negatives", (y == 1) & ~pred)]  # fmt: skip
            scores = proba
            note = (f"At the operating threshold {threshold:.3f}. The heat map is the evidence for "
                    f"<b>{html.escape(str(classes[1]))}</b>.")  # fmt: skip
        else:
            pred_idx = proba.argmax(axis=1)
            groups = [("Correctly classified", pred_idx == y), ("Misclassified", pred_idx != y)]
            scores = proba.max(axis=1)
            note = "The heat map is the evidence for the predicted class."
        ids = test[spec.id].cast(pl.String).to_list()
        plan = candidate["plan"]
        parts = [f"<p>Grad-CAM (last convolutional stage, coarse at small input sizes) over a random sample of up "
                 f"to {SALIENCY_PER_GROUP} test images per group. {note} It shows where the model looked, "
                 "not a segmentation.</p>"]  # fmt: skip
        for g, (label, mask) in enumerate(groups):
            target = targets[g] if targets else None
            where = np.flatnonzero(mask)
            parts.append(f"<h3>{label} ({where.size} of {len(y)})</h3>")
            if where.size == 0:
                parts.append("<p>none in the test split</p>")
                continue
            chosen = np.sort(rng.choice(where, size=min(SALIENCY_PER_GROUP, where.size), replace=False))
            X = load_cached(Path(plan["cache_dir"]), [ids[i] for i in chosen])
            maps = grad_cam(Path(candidate["dir"]), X, target_index=target)
            if target is not None:
                titles = [f"p={scores[i, target]:.2f}" for i in chosen]
            elif proba.ndim == 1:
                titles = [f"p={scores[i]:.2f}" for i in chosen]
            else:
                titles = [f"true {classes[y[i]]} / pred {classes[proba[i].argmax()]}" for i in chosen]
            parts.append(_png_img(saliency_panel_png(X, maps, titles), f"{label}: Grad-CAM"))
        return [(title, "\n".join(parts))]
    except Exception as exc:  # noqa: BLE001 - a saliency failure must not lose the evaluation
        if log is not None:
            log.warning(f"{spec.name}: saliency section failed: {type(exc).__name__}: {exc}")
        return [(title, f"<p>Saliency could not be computed ({html.escape(type(exc).__name__)}).</p>")]


# -- the asset graph ----------------------------------------------------------------------------------------------
def _resume_checkpoint(context: dg.AssetExecutionContext, storage: MeddiagStorage, spec: TaskSpec, out: Path) -> bool:
    """A re-execution of a failed run starts from the checkpoint its parent run left in its staging folder."""
    from meddiag_pipelines.imaging.train import CHECKPOINT

    parent = context.run.parent_run_id
    if not parent or (out / CHECKPOINT).exists():
        return False
    staging = storage.registry.task_dir(spec.name) / ".staging"
    found = sorted(staging.glob(f"*-{parent[:8]}/model/{CHECKPOINT}"))
    if not found:
        return False
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(found[-1], out / f".{CHECKPOINT}.tmp")
    (out / f".{CHECKPOINT}.tmp").replace(out / CHECKPOINT)
    context.log.info(f"{spec.name}: resuming training from the checkpoint of parent run {parent[:8]}")
    return True


def build_image_assets(spec: TaskSpec) -> list:
    name = spec.name
    tags = common.asset_tags(spec)
    image = spec.image
    assert image is not None

    @dg.asset(key=[name, "raw_records"], description=f"{name}: new landed image batches ({image.format or 'format detected'}), read once "
              "and appended to the warehouse (one row per image); unreadable files quarantined one by one.",
              kinds={"duckdb", "polars"}, pool=common.pool(spec), **ingest.partitioned(spec), **tags)  # fmt: skip
    def raw_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> dg.MaterializeResult:
        return ingest.ingest_partitions(context, spec, storage, read_image_records)

    def earlier_batches_validator(storage: MeddiagStorage):
        """Images are also compared with batches validated before (leakage across splits and batches)."""
        ledger = storage.warehouse.ledger(name)
        done = ledger.filter(pl.col("status") == "validated")["batch_id"].to_list() if ledger.height else []
        earlier = storage.warehouse.read(name, RAW_TABLE, done) if done else None
        if labels.task_kind(spec) == "multilabel":
            return lambda frame, task, known_ids: [*validate_images(frame, _validation_spec(task), known_ids, earlier),
                                                   *multilabel_domain_failures(frame, task)]  # fmt: skip
        return lambda frame, task, known_ids: validate_images(frame, task, known_ids, earlier)

    validated_records = ingest.build_validated_records_asset(
        spec, raw_records, tags, "image records of every batch that passed the image checks (GX ids and label "
        "domain; channels, size, bit depth, constant images, duplicates across splits).", earlier_batches_validator)

    @dg.asset_check(asset=validated_records, blocking=True, **ingest.check_partitions(spec), description="Image checks over all validated rows: GX "
                    "(ids present and unique, label domain, pixel hash present), channels / size / bit depth as the "
                    "spec expects, no constant image, no identical image in two splits (leakage) or with two "
                    "labels in one split.")  # fmt: skip
    def validated_records_suite(storage: MeddiagStorage, validated_records: pl.DataFrame) -> dg.AssetCheckResult:
        if validated_records.is_empty():
            return ingest.no_validated_rows_result(spec, storage)
        failures = image_failures(validated_records, _validation_spec(spec), name)
        if labels.task_kind(spec) == "multilabel":
            failures += multilabel_domain_failures(validated_records, spec)
        return common.failures_result(failures)

    @dg.asset_check(asset=validated_records, blocking=False, **ingest.check_partitions(spec), description="Identical images (sha256) repeated within "
                    "one split with the same label, or across a dataset's own split (MedMNIST): not leakage we "
                    "caused, but worth a look (warning only).")  # fmt: skip
    def validated_records_duplicates_within_split(validated_records: pl.DataFrame) -> dg.AssetCheckResult:
        warnings = duplicate_warnings(validated_records, spec)
        return dg.AssetCheckResult(passed=not warnings, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"n_duplicate_images": int(sum(w.unexpected_count or 0 for w in warnings)),
                                             "problems": "; ".join(w.problem for w in warnings) or "none"})  # fmt: skip

    [split] = build_split_asset(spec, validated_records, tags, predefined=PREDEFINED_SPLIT,
                                       finish=_mark_official_copies)

    @dg.multi_asset(
        name=f"{name}__features",
        pool=common.pool(spec),
        outs={
            "features": dg.AssetOut(key=[name, "features"], io_manager_key="warehouse_io_manager", kinds={"polars", "numpy"},
                                    description=f"{name}: the rows whose images are in the preprocessed tensor cache "
                                    f"(<data>/cache/{name}/, uint8 {image.channels} x {image.size} x {image.size}, "
                                    "memory-mapped, rebuilt only for new batches), with keys and split.", **tags),
            "feature_plan": dg.AssetOut(key=[name, "feature_plan"], kinds={"python"},
                                        description=f"{name}: where the tensor cache is and the image shape it holds.",
                                        **tags),
        },  # fmt: skip
    )
    def features(context: dg.AssetExecutionContext, storage: MeddiagStorage, split: pl.DataFrame):
        cache_dir = storage.layout.cache(name)
        built, reused, n_images, refused = 0, 0, 0, set()
        for (batch_id,), rows in split.group_by(BATCH_COLUMN, maintain_order=False):
            records = _cache_records(rows, spec)
            manifest = update_cache(cache_dir, storage.layout.landing(name) / batch_id, batch_id, records, spec)
            refused |= _log_refused(context, batch_id, records, manifest["failed"])
            reused += bool(manifest["reused"])
            built += not manifest["reused"]
            n_images += int(manifest["n"])
        keys = [c for c in dict.fromkeys([spec.id, spec.label, spec.patient_id, SPLIT_COLUMN, BATCH_COLUMN,
                                          COPY_OF_TRAIN_COLUMN, *spec.subgroups]) if c and c in split.columns]  # fmt: skip
        # An image refused by the cache (its file changed or vanished since validation) is never trained on.
        frame = split.filter(~pl.col(spec.id).cast(pl.String).is_in(list(refused))).select(keys)
        plan = {"modality": "image", "cache_dir": str(cache_dir), "size": image.size, "channels": image.channels,
                "format": image.format, "cache_version": CACHE_VERSION, "id_column": spec.id}  # fmt: skip
        cache_bytes = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) if cache_dir.is_dir() else 0
        meta = {"n_rows": frame.height, "n_images_cached": n_images, "n_images_refused": len(refused),
                "batches_built": built, "batches_reused": reused,
                "image_shape": f"{image.channels}x{image.size}x{image.size}", "cache_mb": round(cache_bytes / 2**20, 2)}  # fmt: skip
        yield dg.Output(frame, output_name="features", metadata=meta)
        yield dg.Output(plan, output_name="feature_plan", metadata={"size": image.size, "channels": image.channels})

    def _data(features: pl.DataFrame, plan: dict, part: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = features.filter(pl.col(SPLIT_COLUMN) == part)
        X = load_cached(Path(plan["cache_dir"]), rows[spec.id].cast(pl.String).to_list())
        return X, labels.encode_labels(rows[spec.label], classes, labels.task_kind(spec))

    @dg.asset(key=[name, "candidate_model"], description=f"{name}: ResNet-18 adapted to {image.size} px "
              "(AdamW, cosine schedule, augmentation, class weights, early stopping on validation AUROC; CUDA when "
              "present), checkpointed every epoch in the registry's staging area; weights as a torch state dict.",
              kinds={"pytorch"}, pool=common.pool(spec), **tags)  # fmt: skip
    def candidate_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame,
                        feature_plan: dict) -> dict:  # fmt: skip
        from meddiag_pipelines.imaging.train import CHECKPOINT, train_image_model

        version = common.run_version(context)
        out = storage.registry.staging_dir(name, version) / "model"
        _resume_checkpoint(context, storage, spec, out)
        classes = labels.class_list(spec, features)
        (X_train, y_train), (X_val, y_val) = (_data(features, feature_plan, p, classes) for p in ("train", "val"))
        kind = labels.task_kind(spec)

        def progress(epoch: int, row: dict) -> None:
            context.log.info(f"{name}: epoch {epoch}: loss {row['train_loss']:.4f}, val AUROC {row['val_auroc']:.4f}, "
                             f"{row['images_per_second']:.0f} img/s")  # fmt: skip

        result = train_image_model(X_train, y_train, X_val, y_val, kind, len(classes), spec, out, device=torch_device(),
                                   on_epoch_end=progress)  # fmt: skip
        (out / CHECKPOINT).unlink(missing_ok=True)  # the published version keeps the weights, not the optimizer
        cfg = result.config
        val = result.best_val_auroc
        meta = {
            "name": CANDIDATE_NAME, "framework": "pytorch", "classes": classes, "device": result.device,
            "val_score": None if np.isnan(val) else float(val),
            "params": {"width": cfg["model_config"].get("width"), "input_size": image.size, "channels": image.channels,
                       "epochs": spec.training.epochs, "epochs_run": cfg["epochs_run"], "best_epoch": result.best_epoch,
                       "stopped": result.stopped, "batch_size": spec.training.batch_size,
                       "learning_rate": spec.training.learning_rate, "augment": list(image.augment),
                       "resumed_from_epoch": result.resumed_from_epoch, "seed": spec.training.seed},
        }  # fmt: skip
        handle = common.model_handle(context, spec, version, out, meta, {**feature_plan, "predictor": "cnn",
                                                                           "classes": classes})  # fmt: skip
        speeds = [r["images_per_second"] for r in result.history if r.get("images_per_second") == r.get("images_per_second")]
        context.add_output_metadata({"train_seconds": round(result.seconds, 1), "device": result.device,
                                     "n_train": int(len(X_train)), "n_val": int(len(X_val)),
                                     "images_per_second": float(np.mean(speeds)) if speeds else 0.0})  # fmt: skip
        return handle

    @dg.asset(key=[name, "baseline_model"], description=f"{name}: L2 logistic regression on the cached images "
              f"average-pooled to {baseline_side(image.size)} x {baseline_side(image.size)} per channel "
              "(standardised pixels, C chosen on validation), the plain baseline; JSON coefficients.",
              kinds={"scikitlearn"}, pool=common.pool(spec), **tags)  # fmt: skip
    def baseline_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame,
                       feature_plan: dict) -> dict:  # fmt: skip
        from meddiag_pipelines.tabular.models import train_logistic

        version = common.run_version(context)
        out = storage.registry.staging_dir(name, version) / "baseline"
        classes = labels.class_list(spec, features)
        side = baseline_side(image.size)
        (X_train, y_train), (X_val, y_val) = (_data(features, feature_plan, p, classes) for p in ("train", "val"))
        names = [f"c{c}_y{i}_x{j}" for c in range(image.channels) for i in range(side) for j in range(side)]
        P_train, P_val = pooled_pixels(X_train, side), pooled_pixels(X_val, side)
        if labels.task_kind(spec) == "multilabel":  # one-vs-rest: one binary model per finding
            per_label = [train_logistic(P_train, y_train[:, j], P_val, y_val[:, j], 2, out / f"label_{j}", names)
                         for j in range(len(classes))]  # fmt: skip
            scores = [m["val_score"] for m in per_label if m["val_score"] == m["val_score"]]
            meta = {"framework": "logistic", "val_score": float(np.mean(scores)) if scores else None,
                    "params": {"one_vs_rest": True, "C": [m["params"]["C"] for m in per_label], "penalty": "l2"}}  # fmt: skip
            predictor = "pixel_logistic_ovr"
        else:
            meta = train_logistic(P_train, y_train, P_val, y_val, len(classes), out, names)
            predictor = "pixel_logistic"
        meta = {**meta, "name": BASELINE_NAME, "classes": classes}
        plan = {**feature_plan, "predictor": predictor, "baseline_side": side, "classes": classes}
        return common.model_handle(context, spec, version, out, meta, plan)

    downstream = lifecycle.build_model_lifecycle_assets(
        spec, tags, split_asset=[split], predictor_factory=_predictor_factory(spec), explain=None,
        missing_data=lambda train_rows, plan: [],
        test_sections=lambda candidate, test, proba, metrics: saliency_sections(spec, candidate, test, proba, metrics),
    )  # fmt: skip
    return [raw_records, validated_records, validated_records_suite, validated_records_duplicates_within_split, split,
            features, candidate_model, baseline_model, *downstream]  # fmt: skip
