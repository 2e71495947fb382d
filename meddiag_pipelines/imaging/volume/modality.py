"""The volume modality (:class:`~meddiag_pipelines.modalities.base.Modality`): imaging's steps in 3D. What differs
from the image modality (``imaging.modality``, whose steps it inherits) is said here; the rest is the same.

* raw_records        ``read_volume_batch`` per landed batch (``volume.format``); a file that does not read, or
                     declares more than ``volume.max_voxels`` voxels, is quarantined with the reason (the others
                     flow); each record carries its voxel hash and range.
* validated_records  imaging's checks (GX ids and label domain, voxel hash, duplicates across splits, constant
                     volumes) with the volume geometry checks (``volume.validation``).
* split              the patient-level hash split, except that an npz record keeps its file's own split.
* features           the memory-mapped uint8 cache of (1, S, S, S) volumes per batch (``imaging.preprocess``).
* candidate_model    the 3D ResNet (``imaging.model`` with ``spatial_dims`` 3: ResNet-10 or -18, ``volume.model``)
                     trained by imaging's trainer: AdamW, batches of 32, cosine schedule fitted to the time budget,
                     3D augmentation, class weights, EMA, early stopping, optional optuna search (``training.tune``),
                     checkpoints and resume.
* candidate_model    (also) the voxel-feature model of ``baseline_model`` in ``voxel_features/``; the candidate is
                     the one of the higher validation AUROC (``volume.candidate: cnn`` keeps the CNN).
* baseline_model     trained by the candidate step: the cached volumes average-pooled to 7^3 (8^3) blocks beside
                     intensity statistics (mean, sd, quantiles, histogram of the volume and of its centre), XGBoost
                     (optuna) or L2 logistic regression on them, one kept by flat's model-choice rule
                     (``flat.models.choose_model``).
* evaluation ...     the shared lifecycle; the report gains Grad-CAM 3D as axial, coronal and sagittal slices
                     through each shown volume's saliency peak.
* predictions        each scored volume's reason (``top_features``): where its Grad-CAM 3D peaks (voxel z, y, x of
                     the S^3 model input) and the share of the map within 2 voxels of that peak.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines import labels
from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.imaging.modality import ImageModality, _data
from meddiag_pipelines.imaging.preprocess import cache_batch, load_cached
from meddiag_pipelines.imaging.readers import LABELS_CSV, ImageBatchError
from meddiag_pipelines.imaging.scoring import baseline_side, volume_feature_names, volume_features
from meddiag_pipelines.imaging.validation import image_failures, validate_images
from meddiag_pipelines.imaging.volume.readers import load_volume, read_volume_batch
from meddiag_pipelines.imaging.volume.validation import volume_property_failures
from meddiag_pipelines.ingestion.batches import ReadOutcome, Validator
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.modalities.base import Descriptions, Explainer, PlainReader, Storage, TrainedModel, TrainingRun
from meddiag_pipelines.specs import TaskSpec, spec_columns
from meddiag_pipelines.validation.suites import CheckFailure

VOXEL_FEATURES = "voxel_features"  # the voxel-feature model's folder inside the candidate's
BASELINE_JSON = "baseline.json"  # its meta, for the baseline asset
CANDIDATE_CHOICE = "candidate_choice"  # the CNN-or-voxel-features evidence, in the candidate's params and metrics


def read_volume_records(batch: LandedBatch, spec: TaskSpec) -> ReadOutcome:
    """Reader for ``ingest_new_batches``: records in the spec's column names; each file that does not read is a
    per-file rejection naming the problem; a refused series folder goes to quarantine whole."""
    try:
        result = read_volume_batch(batch.path, spec)
    except ImageBatchError as exc:
        raise BatchRejected(LABELS_CSV if str(exc).startswith(LABELS_CSV) else batch.batch_id, str(exc)) from exc
    return ReadOutcome(spec_columns(result.records, spec), result.rejected, moves_folders=True)


def _cache_settings(spec: TaskSpec) -> str:
    """What shapes a cached volume besides its voxels (in the cache fingerprint)."""
    v = spec.volume
    intensity = v.intensity.model_dump(exclude_none=True) if v.intensity else None
    return f"volume|{v.format}|{v.size}|{v.spacing}|{intensity}|{v.orientation}"


def explain_volumes(model_dir: Path, rows: pl.DataFrame, plan: dict) -> list[list[tuple[str, float]]]:
    """Per scored volume, where the CNN's evidence is: its Grad-CAM 3D peak and the share of the map near it
    (nothing for the pooled-voxel baseline, whose coefficients are its explanation)."""
    if plan.get("predictor") != "cnn" or rows.is_empty():
        return [[] for _ in range(rows.height)]
    from meddiag_pipelines.imaging.saliency import grad_cam

    maps = grad_cam(model_dir, load_cached(Path(plan["cache_dir"]), rows[plan["id_column"]].cast(pl.String).to_list()))
    reasons = []
    for heat in maps:
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        near = heat[tuple(slice(max(0, p - 2), p + 3) for p in peak)].sum() / max(float(heat.sum()), 1e-12)
        z, y, x = (int(p) for p in peak)
        reasons.append([(f"Grad-CAM peak at z{z} y{y} x{x} of {heat.shape[0]}^3, share within 2 voxels", float(near))])
    return reasons


def candidate_choice(y_val: np.ndarray, probas: dict[str, np.ndarray], seed: int, setting: str = "auto") -> dict:
    """The CNN or the voxel-feature model (``probas``' two keys) as the candidate: the higher validation AUROC
    (the CNN on a tie), or the CNN when ``setting`` is ``cnn``; with the paired-bootstrap evidence (flat's)."""
    from meddiag_pipelines.flat.models import validation_bootstrap

    evidence = validation_bootstrap(y_val, probas, seed, pair=("voxel_features", "cnn"))
    advantage = evidence["difference"]
    wins = setting == "auto" and bool(np.isfinite(advantage) and advantage > 0)
    why = "volume.candidate is cnn" if setting == "cnn" else "the higher validation AUROC"
    reason = (
        f"{'the voxel-feature model' if wins else 'the 3D CNN'} kept ({why}): the voxel-feature model's validation "
        f"AUROC minus the CNN's is {advantage:+.3f} (standard error {evidence['difference_se']:.3f}, "
        f"{evidence['method']})"
    )
    return {"chosen": "voxel_features" if wins else "cnn", "reason": reason, **evidence}


class VolumeModality(ImageModality):
    name = "volume"
    candidate_name = "resnet3d"
    baseline_name = "pooled_voxels_intensity_statistics"
    baseline_trained_by_candidate = True

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        v = spec.volume
        side = baseline_side(v.size, 3)
        search = f", optuna search of {spec.training.trials} trials" if spec.training.tune else ""
        return Descriptions(
            raw_records=f"new landed volume batches ({v.format}), read once and appended to the warehouse (one row "
            "per volume); unreadable or oversized files quarantined with the reason.",
            validated_records="volume records of every batch that passed the checks (GX ids and label domain; size, "
            "bit depth, constant volumes, duplicates across splits).",
            suite="Volume checks over all validated rows: GX (ids present and unique, label domain, voxel hash "
            "present), size and bit depth as the spec expects, no constant volume, no identical volume in two splits "
            "(leakage) or with two labels in one split.",
            features=f"the rows whose volumes are in the preprocessed tensor cache (<data>/cache/{spec.name}/, uint8 "
            f"1 x {v.size}^3, memory-mapped, rebuilt only for new batches), with keys and split.",
            feature_plan="where the tensor cache is and the volume shape it holds.",
            candidate_model=f"3D {v.model.replace('resnet', 'ResNet-')} at {v.size}^3 (AdamW, cosine schedule, 3D "
            f"augmentation, class weights, weight EMA, early stopping on validation AUROC{search}; CUDA when "
            "present), checkpointed every epoch in the registry's staging area; weights as a torch state dict.",
            baseline_model="trained by the candidate step beside the CNN (and the candidate itself when its "
            "validation AUROC is the higher): the cached volumes average-pooled to "
            f"{side}^3 blocks with intensity statistics (mean, sd, quantiles, histogram of the volume and of its "
            "centre): XGBoost (optuna) and L2 logistic regression on them, the logistic kept unless XGBoost's "
            "advantage exceeds 1.645 standard errors (cross-validated); UBJ or JSON.",
        )

    def reader(self, spec: TaskSpec) -> PlainReader:
        return PlainReader(read_volume_records)

    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        """Volumes are also compared with batches validated before (leakage across splits and batches)."""
        earlier = self.earlier_records(spec, storage)
        return lambda frame, task, known_ids: validate_images(
            frame, task, known_ids, earlier, properties=volume_property_failures
        )

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        return image_failures(records, spec, spec.name, properties=volume_property_failures)

    noun = "volume"

    def model_input(self, spec: TaskSpec) -> dict:
        return {"size": spec.volume.size, "channels": 1, "spatial_dims": 3}

    def cache_batch(
        self, spec: TaskSpec, cache_dir: Path, batch_dir: Path, batch_id: str, records: pl.DataFrame
    ) -> dict:
        size = spec.volume.size

        def load(source: str, sha256: str | None) -> np.ndarray:
            return load_volume(batch_dir, source, spec, sha256)

        shape = (1, size, size, size)
        return cache_batch(cache_dir, batch_id, records, shape, _cache_settings(spec), load, self.model_input(spec))

    def train_candidate(
        self, spec: TaskSpec, features: pl.DataFrame, feature_plan: dict, run: TrainingRun
    ) -> TrainedModel:
        """The 3D CNN, and beside it (in ``voxel_features/``) the voxel-feature model; the candidate is the one of
        the higher validation AUROC (:func:`candidate_choice`), or the CNN when ``volume.candidate`` says so."""
        from meddiag_pipelines.flat.models import predict_tabular
        from meddiag_pipelines.imaging.train import predict_image_model

        cnn = super().train_candidate(spec, features, feature_plan, run)
        voxel = self._train_voxel_features(spec, features, feature_plan, run)
        X_val, y_val = _data(run.storage, spec, features, feature_plan, "val", cnn.meta["classes"])
        probas = {
            "cnn": predict_image_model(cnn.model_dir, X_val, cnn.meta["device"]),
            "voxel_features": predict_tabular(voxel.model_dir, volume_features(X_val, voxel.plan["baseline_side"])),
        }
        choice = candidate_choice(y_val, probas, spec.training.seed, spec.volume.candidate)
        chosen = voxel if choice["chosen"] == "voxel_features" else cnn
        meta = {**chosen.meta, "params": {**chosen.meta.get("params", {}), CANDIDATE_CHOICE: choice}}
        return TrainedModel(chosen.model_dir, meta, chosen.plan, cnn.metadata)

    def _train_voxel_features(
        self, spec: TaskSpec, features: pl.DataFrame, feature_plan: dict, run: TrainingRun
    ) -> TrainedModel:
        """Pooled voxels and intensity statistics through flat's two models and its choice, in the candidate's
        ``voxel_features/`` folder."""
        from meddiag_pipelines.flat.models import train_tabular_models

        classes = labels.class_list(spec, features)
        side, channels = baseline_side(int(feature_plan["size"]), 3), int(feature_plan["channels"])
        (X_train, y_train), (X_val, y_val) = (
            _data(run.storage, spec, features, feature_plan, p, classes) for p in ("train", "val")
        )
        F_train, F_val = volume_features(X_train, side), volume_features(X_val, side)
        out = run.out_dir / VOXEL_FEATURES
        names = volume_feature_names(channels, side)
        meta = train_tabular_models(F_train, y_train, F_val, y_val, len(classes), spec.training, out, names)
        meta = {**meta, "name": self.baseline_name, "classes": classes}
        atomic_write_json(out / BASELINE_JSON, meta)
        plan = {**feature_plan, "predictor": "voxel_features", "baseline_side": side, "classes": classes}
        return TrainedModel(out, meta, plan)

    def baseline_of_candidate(self, spec: TaskSpec, candidate_dir: Path, candidate: dict) -> TrainedModel:
        """The voxel-feature model trained beside the CNN (the candidate itself when it was chosen)."""
        out = (
            candidate_dir if candidate["plan"].get("predictor") == "voxel_features" else candidate_dir / VOXEL_FEATURES
        )
        meta = json.loads((out / BASELINE_JSON).read_text(encoding="utf-8"))
        plan = {
            **candidate["plan"],
            "predictor": "voxel_features",
            "baseline_side": baseline_side(int(candidate["plan"]["size"]), 3),
        }
        return TrainedModel(out, meta, plan)

    def test_sections(
        self, spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict
    ) -> list[tuple[str, str]]:
        """Grad-CAM 3D when the candidate is the CNN (the voxel-feature model has no saliency map)."""
        if candidate["plan"].get("predictor") != "cnn":
            return []
        return super().test_sections(spec, candidate, test, proba, metrics)

    def extra_metrics(self, spec: TaskSpec, candidate: dict, split: pl.DataFrame) -> dict:
        """Why the candidate is the CNN or the voxel-feature model (``metrics.json``'s ``candidate_choice``)."""
        choice = candidate.get("params", {}).get(CANDIDATE_CHOICE)
        return {CANDIDATE_CHOICE: choice} if choice else {}

    def explainer(self, spec: TaskSpec) -> Explainer:
        return explain_volumes


MODALITY = VolumeModality()
