"""The imaging modality (:class:`~meddiag_pipelines.modalities.base.Modality`), with the same asset keys as a
tabular task. Logic lives in the modules of ``meddiag_pipelines/imaging``; this file says what each step does.

* raw_records        ``read_image_batch`` per landed batch (format from the spec, else detected from what landed);
                     unreadable or oversized files are quarantined one by one (the good ones flow); each record
                     carries its pixel hash and the intensity range of its one decode (for validation).
* validated_records  ``imaging.validation.validate_images`` per batch (GX: ids, label domain; channels, size, bit
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

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from meddiag_pipelines import labels
from meddiag_pipelines.device import torch_device
from meddiag_pipelines.imaging.preprocess import CACHE_VERSION, load_cached, update_cache
from meddiag_pipelines.imaging.readers import LABELS_CSV, ImageBatchError, read_image_batch, source_file
from meddiag_pipelines.imaging.report import saliency_section, tuning_section
from meddiag_pipelines.imaging.scoring import baseline_side, embed_images, pooled_pixels, predict_images
from meddiag_pipelines.imaging.validation import (
    PREDEFINED_SPLIT,
    duplicate_warnings,
    image_failures,
    mark_official_copies,
    multilabel_domain_failures,
    validate_images,
)
from meddiag_pipelines.ingestion.batches import RAW_TABLE, ReadOutcome, Validator
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch, display_name
from meddiag_pipelines.modalities.base import (
    BuiltFeatures,
    CheckOutcome,
    Descriptions,
    ExtraCheck,
    Modality,
    PlainReader,
    PredictorFactory,
    Storage,
    TrainedModel,
    TrainingRun,
)
from meddiag_pipelines.registry.store import STAGING
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec, spec_columns
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.validation.suites import CheckFailure

if TYPE_CHECKING:
    from meddiag_pipelines.registry.export import ModelExport, VersionToExport

CANDIDATE_NAME = "resnet18_small"
BASELINE_NAME = "logistic_regression_pixels"


# -- reading ------------------------------------------------------------------------------------------------------
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
    return ReadOutcome(spec_columns(result.records, spec), rejected)


# -- features: the tensor cache -----------------------------------------------------------------------------------
def log_refused(
    warnings: list[str], batch_id: str, records: pl.DataFrame, failed: list[list[str]], what: str = "image"
) -> set[str]:
    """A warning per file (never per id) the cache refused, added to ``warnings``; their ids, to leave them out."""
    ids = {f[0] for f in failed}
    source_of = dict(zip(records["id"].to_list(), records["source"].to_list(), strict=True))
    for record_id, problem in failed:
        warnings.append(
            f"batch {display_name(batch_id)}: {what} {source_of.get(record_id, '?')} left out of training: {problem}"
        )
    return ids


def cache_records(rows: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """One batch's rows as the cache wants them, in a stable order (the cache fingerprint depends on it)."""
    return rows.select(pl.col(spec.id).cast(pl.String).alias("id"), "source", "sha256").sort("id")


def _validation_spec(spec: TaskSpec) -> TaskSpec:
    """Multi-label ``classes`` name the findings, not label values: GX must not check the label against them."""
    return spec.model_copy(update={"classes": None}) if labels.task_kind(spec) == "multilabel" else spec


def _predictor_factory(spec: TaskSpec):
    def factory(plan: dict):
        cache_dir = Path(plan["cache_dir"])

        def predict(model_dir: Path, rows: pl.DataFrame) -> np.ndarray:
            return predict_images(
                Path(model_dir),
                plan,
                rows[spec.id].cast(pl.String).to_list(),
                lambda ids: load_cached(cache_dir, ids),
                labels.task_kind(spec),
                torch_device(),
            )

        return predict

    return factory


def _data(
    storage, spec: TaskSpec, features: pl.DataFrame, plan: dict, part: str, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    rows = features.filter(pl.col(SPLIT_COLUMN) == part)
    X = load_cached(storage.root.path(plan["cache_dir"]), rows[spec.id].cast(pl.String).to_list())
    return X, labels.encode_labels(rows[spec.label], classes, labels.task_kind(spec))


# -- report: saliency ---------------------------------------------------------------------------------------------
def _saliency_sections(
    spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict
) -> list[tuple[str, str]]:
    """The Grad-CAM section of the report, over the test images in the tensor cache, after the hyperparameter
    search's when the model was tuned."""
    cache_dir = Path(candidate["plan"]["cache_dir"])
    ids = test[spec.id].cast(pl.String).to_list()
    tuning = [tuning_section(candidate["params"]["tuning"])] if candidate["params"].get("tuning") else []
    return [
        *tuning,
        saliency_section(
            Path(candidate["dir"]),
            candidate["classes"],
            labels.task_kind(spec),
            test[spec.label],
            proba,
            metrics,
            lambda rows: load_cached(cache_dir, [ids[i] for i in rows]),
            spec.evaluation.seed,
        ),
    ]


class ImageModality(Modality):
    name = "image"
    candidate_name = CANDIDATE_NAME
    baseline_name = BASELINE_NAME
    feature_kinds = frozenset({"polars", "numpy"})
    candidate_kinds = frozenset({"pytorch"})
    gpu_candidate = True
    predefined_split = PREDEFINED_SPLIT

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        image = spec.image
        model_text = (
            f"timm {' / '.join(image.backbone_names())} ({image.finetune} fine-tuning)"
            if image.backbone
            else f"ResNet-18 adapted to {image.size} px"
        )
        search = f", optuna search of {spec.training.trials} trials" if image.tuned(spec.training) else ""
        return Descriptions(
            raw_records=f"new landed image batches ({image.format or 'format detected'}), read once and appended "
            "to the warehouse (one row per image); unreadable files quarantined one by one.",
            validated_records="image records of every batch that passed the image checks (GX ids and label "
            "domain; channels, size, bit depth, constant images, duplicates across splits).",
            suite="Image checks over all validated rows: GX (ids present and unique, label domain, pixel hash "
            "present), channels / size / bit depth as the spec expects, no constant image, no identical image in "
            "two splits (leakage) or with two labels in one split.",
            features=f"the rows whose images are in the preprocessed tensor cache (<data>/cache/{spec.name}/, uint8 "
            f"{image.channels} x {image.size} x {image.size}, memory-mapped, rebuilt only for new batches), with "
            "keys and split.",
            feature_plan="where the tensor cache is and the image shape it holds.",
            candidate_model=f"{model_text} (AdamW, cosine schedule, augmentation, class weights, early stopping on "
            f"validation AUROC{search}; CUDA when present), checkpointed every epoch in the registry's staging "
            "area; weights as a torch state dict.",
            baseline_model=f"L2 logistic regression on the cached images average-pooled to "
            f"{baseline_side(image.size)} x {baseline_side(image.size)} per channel (standardised pixels, C chosen "
            "on validation), the plain baseline; JSON coefficients.",
        )

    # -- ingestion ------------------------------------------------------------------------------------------------
    def reader(self, spec: TaskSpec) -> PlainReader:
        return PlainReader(read_image_records)

    @staticmethod
    def earlier_records(spec: TaskSpec, storage: Storage) -> pl.DataFrame | None:
        """The raw records of the batches validated before (a new batch is compared with them for leakage)."""
        ledger = storage.warehouse.ledger(spec.name)
        done = ledger.filter(pl.col("status") == "validated")["batch_id"].to_list() if ledger.height else []
        return storage.warehouse.read(spec.name, RAW_TABLE, done) if done else None

    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        """Images are also compared with batches validated before (leakage across splits and batches)."""
        earlier = self.earlier_records(spec, storage)
        if labels.task_kind(spec) == "multilabel":
            return lambda frame, task, known_ids: [
                *validate_images(frame, _validation_spec(task), known_ids, earlier),
                *multilabel_domain_failures(frame, task),
            ]
        return lambda frame, task, known_ids: validate_images(frame, task, known_ids, earlier)

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        failures = image_failures(records, _validation_spec(spec), spec.name)
        if labels.task_kind(spec) == "multilabel":
            failures += multilabel_domain_failures(records, spec)
        return failures

    def extra_checks(self, spec: TaskSpec) -> list[ExtraCheck]:
        def duplicates_within_split(storage: Storage, validated_records: pl.DataFrame) -> CheckOutcome:
            warnings = duplicate_warnings(validated_records, spec)
            return CheckOutcome(
                warnings,
                warn_only=True,
                table=False,
                metadata={
                    "n_duplicate_images": int(sum(w.unexpected_count or 0 for w in warnings)),
                    "problems": "; ".join(w.problem for w in warnings) or "none",
                },
            )

        return [
            ExtraCheck(
                "validated_records_duplicates_within_split",
                "validated_records",
                "Identical images "
                "(sha256) repeated within one split with the same label, or across a dataset's own split "
                "(MedMNIST): not leakage we caused, but worth a look (warning only).",
                False,
                duplicates_within_split,
            )
        ]

    def finish_split(self, spec: TaskSpec, frame: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
        return mark_official_copies(frame)

    # -- features and models --------------------------------------------------------------------------------------
    noun = "image"  # what one record holds, in the features' metadata (``n_images_cached``) and warnings

    def model_input(self, spec: TaskSpec) -> dict:
        """The cached tensor's shape: ``size``, ``channels`` (and ``spatial_dims`` when not 2)."""
        return {"size": spec.image.size, "channels": spec.image.channels}

    def cache_batch(
        self, spec: TaskSpec, cache_dir: Path, batch_dir: Path, batch_id: str, records: pl.DataFrame
    ) -> dict:
        """Cache one batch's records; returns the cache manifest (``n``, ``reused``, ``failed``)."""
        return update_cache(cache_dir, batch_dir, batch_id, records, spec)

    def features(self, spec: TaskSpec, split: pl.DataFrame, storage: Storage) -> BuiltFeatures:
        """The rows whose images (volumes) are in the tensor cache, built or reused one batch at a time; the plan
        and metadata name what one record holds by :attr:`noun`."""
        name, noun, shape = spec.name, self.noun, self.model_input(spec)
        cache_dir = storage.root.cache(name)
        built, reused, n_cached, refused, warnings = 0, 0, 0, set(), []
        for (batch_id,), rows in split.group_by(BATCH_COLUMN, maintain_order=False):
            records = cache_records(rows, spec)
            manifest = self.cache_batch(spec, cache_dir, storage.root.landing(name) / batch_id, batch_id, records)
            refused |= log_refused(warnings, batch_id, records, manifest["failed"], noun)
            reused += bool(manifest["reused"])
            built += not manifest["reused"]
            n_cached += int(manifest["n"])
        # An image refused by the cache (its file changed or vanished since validation) is never trained on.
        frame = split.filter(~pl.col(spec.id).cast(pl.String).is_in(list(refused))).select(key_columns_in(split, spec))
        plan = {
            "modality": self.name,
            "cache_dir": storage.root.relative(cache_dir),
            **shape,
            "format": getattr(spec, self.name).format,  # the spec section named as the modality: image, volume
            "cache_version": CACHE_VERSION,
            "id_column": spec.id,
        }
        cache_bytes = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) if cache_dir.is_dir() else 0
        sides = "x".join([str(shape["size"])] * int(shape.get("spatial_dims", 2)))
        meta = {
            "n_rows": frame.height,
            f"n_{noun}s_cached": n_cached,
            f"n_{noun}s_refused": len(refused),
            "batches_built": built,
            "batches_reused": reused,
            f"{noun}_shape": f"{shape['channels']}x{sides}",
            "cache_mb": round(cache_bytes / 2**20, 2),
        }
        return BuiltFeatures(frame, plan, meta, shape, warnings)

    def train_candidate(
        self, spec: TaskSpec, features: pl.DataFrame, feature_plan: dict, run: TrainingRun
    ) -> TrainedModel:
        from meddiag_pipelines.imaging.train import CHECKPOINT, adopt_parent_checkpoint
        from meddiag_pipelines.imaging.tuning import fit_image_model

        name, storage, out = spec.name, run.storage, run.out_dir
        parent = run.parent_run_id
        if adopt_parent_checkpoint(out, storage.registry.task_dir(name) / STAGING, parent):
            run.log.info(f"{name}: resuming training from the checkpoint of parent run {parent[:8]}")
        classes = labels.class_list(spec, features)
        (X_train, y_train), (X_val, y_val) = (
            _data(storage, spec, features, feature_plan, p, classes) for p in ("train", "val")
        )
        kind = labels.task_kind(spec)

        def progress(epoch: int, row: dict) -> None:
            run.log.info(
                f"{name}: epoch {epoch}: loss {row['train_loss']:.4f}, val AUROC {row['val_auroc']:.4f}, "
                f"{row['images_per_second']:.0f} img/s"
            )

        result = fit_image_model(
            X_train, y_train, X_val, y_val, kind, len(classes), spec, out, torch_device(), on_epoch_end=progress
        )
        (out / CHECKPOINT).unlink(missing_ok=True)  # the published version keeps the weights, not the optimizer
        cfg = result.config
        if result.stopped == "time_budget":  # the figures are of a shorter training than the spec asks for
            run.log.warning(
                f"{name}: the time budget of {spec.training.time_budget_s:g} s stopped training after "
                f"{cfg['epochs_run']} of {spec.training.epochs} epochs"
            )
        val = result.best_val_auroc
        meta = {
            "name": self.candidate_name,
            "framework": "pytorch",
            "classes": classes,
            "device": result.device,
            "val_score": None if np.isnan(val) else float(val),
            "params": {
                **{k: v for k, v in cfg["hyperparameters"].items() if v is not None},
                "input_size": feature_plan["size"],
                "channels": feature_plan["channels"],
                "epochs": spec.training.epochs,
                "epochs_run": cfg["epochs_run"],
                "best_epoch": result.best_epoch,
                "stopped": result.stopped,
                "batch_size": spec.training.batch_size,
                "resumed_from_epoch": result.resumed_from_epoch,
                "seed": spec.training.seed,
                **({"weights": cfg["weights"]} if cfg.get("weights") else {}),
                **({"tuning": cfg["tuning"]} if cfg.get("tuning") else {}),
            },
        }
        speeds = [
            r["images_per_second"] for r in result.history if r.get("images_per_second") == r.get("images_per_second")
        ]
        return TrainedModel(
            out,
            meta,
            {**feature_plan, "predictor": "cnn", "classes": classes},
            {
                "train_seconds": round(result.seconds, 1),
                "device": result.device,
                "n_train": int(len(X_train)),
                "n_val": int(len(X_val)),
                "images_per_second": float(np.mean(speeds)) if speeds else 0.0,
                "stopped": result.stopped,
            },
        )

    def train_baseline(
        self, spec: TaskSpec, features: pl.DataFrame, feature_plan: dict, run: TrainingRun
    ) -> TrainedModel:
        from meddiag_pipelines.logistic import train_logistic

        out, dims = run.out_dir, int(feature_plan.get("spatial_dims", 2))
        classes = labels.class_list(spec, features)
        side = baseline_side(int(feature_plan["size"]), dims)
        (X_train, y_train), (X_val, y_val) = (
            _data(run.storage, spec, features, feature_plan, p, classes) for p in ("train", "val")
        )
        axes = "zyx"[3 - dims :]
        names = [
            f"c{c}_" + "_".join(f"{a}{i}" for a, i in zip(axes, cell, strict=True))
            for c in range(int(feature_plan["channels"]))
            for cell in np.ndindex(*(side,) * dims)
        ]
        P_train, P_val = pooled_pixels(X_train, side), pooled_pixels(X_val, side)
        if labels.task_kind(spec) == "multilabel":  # one-vs-rest: one binary model per finding
            per_label = [
                train_logistic(P_train, y_train[:, j], P_val, y_val[:, j], 2, out / f"label_{j}", names)
                for j in range(len(classes))
            ]
            scores = [m["val_score"] for m in per_label if m["val_score"] == m["val_score"]]
            meta = {
                "framework": "logistic",
                "val_score": float(np.mean(scores)) if scores else None,
                "params": {"one_vs_rest": True, "C": [m["params"]["C"] for m in per_label], "penalty": "l2"},
            }
            predictor = "pixel_logistic_ovr"
        else:
            meta = train_logistic(P_train, y_train, P_val, y_val, len(classes), out, names)
            predictor = "pixel_logistic"
        meta = {**meta, "name": self.baseline_name, "classes": classes}
        plan = {**feature_plan, "predictor": predictor, "baseline_side": side, "classes": classes}
        return TrainedModel(out, meta, plan)

    # -- scoring and the report -----------------------------------------------------------------------------------
    def predictor_factory(self, spec: TaskSpec) -> PredictorFactory:
        return _predictor_factory(spec)

    def embed(self, spec: TaskSpec, model_dir: Path, plan: dict, rows: pl.DataFrame) -> np.ndarray:
        """The CNN's pooled penultimate features of the cached images (the baseline's: its pooled pixels)."""
        cache_dir = Path(plan["cache_dir"])
        ids = rows[spec.id].cast(pl.String).to_list()
        return embed_images(Path(model_dir), plan, ids, lambda part: load_cached(cache_dir, part), torch_device())

    def test_sections(
        self, spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict
    ) -> list[tuple[str, str]]:
        return _saliency_sections(spec, candidate, test, proba, metrics)

    def exportable(self, version: "VersionToExport") -> "ModelExport":
        from meddiag_pipelines.imaging.export import exportable

        return exportable(version)


MODALITY = ImageModality()
