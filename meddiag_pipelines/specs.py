"""Task specs: one YAML file describes one diagnostic task.

Bundled specs live in ``meddiag_pipelines/tasks``; every ``*.yaml`` in the folder named by
``MEDDIAG_TASKS_DIR`` is added too. A bad spec fails at load with the file, the key and the problem.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meddiag_pipelines.dagster_checks import dagster_accepts

if TYPE_CHECKING:
    import polars as pl

BUNDLED_TASKS_DIR = Path(__file__).parent / "tasks"
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# The asset group holding the specs that did not load (see defs/build.py).
SPEC_ERRORS_GROUP = "spec_errors"
# A task is also a DuckDB schema: these names are DuckDB's own catalogs and schemas (``system``, ``temp``,
# ``main``, ``information_schema``, ``pg_catalog``, ``memory`` for an in-memory database) or the warehouse's
# catalog (``meddiag``, from ``meddiag.duckdb``); a schema so named is refused or ambiguous in SQL.
RESERVED_TASK_NAMES = frozenset(
    {"information_schema", "pg_catalog", "main", "temp", "system", "memory", "meddiag", SPEC_ERRORS_GROUP}
)
# The modalities a spec may name: the bundled ones, and any a plug-in adds (``modalities.registry.register``).
MODALITIES = {"tabular", "image", "text", "omop", "volume"}
# The study keys of an omop task (checked by the models of meddiag_pipelines/omop/spec.py, imported by name when a
# spec uses them, as the registry imports a modality) and the columns its records have (omop/modality.py).
OMOP_KEYS = ("cohort", "outcomes", "time_at_risk", "covariates")
OMOP_SPEC_MODULE = "meddiag_pipelines.omop.spec"
# The models read covariates, not these columns: excluded, so no split links two persons by their equal values.
OMOP_DEFAULTS = {
    "label": "outcome",
    "positive": "1",
    "classes": ["0", "1"],
    "id": "person_id",
    "patient_id": "person_id",
    "exclude": ["age_at_index", "gender", "tar_days", "index_date"],
}


_INTEGRAL_DECIMAL = re.compile(r"^([+-]?\d+)\.0*$")


def canonical_label(value: object) -> str | None:
    """One text form for a label value, whatever type the spec (YAML) or the file (CSV, Parquet, JSONL) gave it:
    booleans and ``"true"``/``"false"`` become ``"1"``/``"0"``, integral numbers lose a ``.0`` (``1.0`` and
    ``"1.0"`` are ``"1"``), other text is stripped as is (``"01"`` keeps its zero). ``None`` and ``""`` are no label."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        return None
    if text.lower() in ("true", "false"):
        return "1" if text.lower() == "true" else "0"
    integral = _INTEGRAL_DECIMAL.match(text)
    return str(int(integral.group(1))) if integral else text


def _label_text(value: object) -> object:
    """A label value as the user wrote it in YAML (``1``, ``1.0``, ``true``, ``"1"``) in its canonical text form;
    anything else is left for pydantic to refuse with its own message."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a label must be a finite number or text")
    if isinstance(value, (str, int, float)):
        text = canonical_label(value)
        if text is None:
            raise ValueError("a label must not be empty")
        return text
    return value


Label = Annotated[str, BeforeValidator(_label_text)]


FAMILY_SEPARATOR = "__"  # <spec name>__<outcome>: the task of one outcome of an omop spec of several
ROW_ID = "row_id"  # the id column tabular readers make when the spec names none and the data has none
INTERNAL_PREFIX = "_meddiag_"  # the pipeline's own columns; readers refuse user columns in this namespace
BATCH_COLUMN = f"{INTERNAL_PREFIX}batch"  # added by ingestion to every record: which batch it came from


HUB_PREFIX = "hub:"


def names_hub(value: str | None) -> bool:
    """Whether a spec's weights or model value asks for a download (``hub`` or ``hub:<name>``), not a local path."""
    return bool(value) and (value == HUB_PREFIX[:-1] or value.startswith(HUB_PREFIX))


def beside_spec(name: str, info: ValidationInfo) -> Path:
    """A file or folder a spec names (weights, a model folder): absolute, or relative to the spec file's folder
    (``load_spec`` passes it as context; without one, the working directory)."""
    path = Path(name).expanduser()
    return (path if path.is_absolute() else Path((info.context or {}).get("spec_dir", ".")) / path).resolve()


class SpecError(ValueError):
    """A task spec that cannot be used; the message names the file, the key and the problem."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem

    def __reduce__(self):
        return SpecError, (self.path, self.problem)


class _Section(BaseModel):
    # NaN or an infinity in a range, fraction, margin or threshold would silently pass every comparison.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _ordered(low: float | None, high: float | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"{what}: the lower bound {low} is above the upper bound {high}")


class SplitSpec(_Section):
    """Fractions of patients (or records) sent to each split by a stable hash."""

    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    salt: str = "meddiag"

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must sum to 1")
        return self


class TrainingSpec(_Section):
    seed: int = 42
    trials: int = Field(12, ge=1, description="optuna trials for the main model")
    timeout_s: float = Field(60.0, gt=0, description="wall-clock bound of the optuna search")
    max_rounds: int = Field(600, ge=10)
    early_stopping_rounds: int = Field(30, ge=1)
    distributed: bool | None = Field(
        None,
        description="tabular: the XGBoost final fit on the Dask cluster the step "
        "runs on (MEDDIAG_EXECUTOR=dask); unset: when the training table is large",
    )
    # Imaging / text models (ignored by tabular tasks).
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1)
    time_budget_s: float = Field(1200.0, gt=0, description="training stops after this many seconds")
    tune: bool = Field(
        False,
        description="image: optuna over learning rate, optimiser, weight decay, augmentation "
        "and structure, `trials` trials within time_budget_s (a list of backbones tunes too)",
    )
    gpu: bool = Field(
        False,
        description="image: the candidate model's step runs only on a Dask worker started "
        "with `--resources GPU=1` (MEDDIAG_EXECUTOR=dask); the other executors ignore it",
    )


class EvaluationSpec(_Section):
    target_sensitivity: float = Field(0.90, gt=0, lt=1)
    operating_threshold: Literal["youden", "target_sensitivity", "0.5"] | float = "youden"
    min_subgroup_n: int = Field(30, ge=1, description="subgroups smaller than this are 'too few to judge'")
    n_bootstrap: int = Field(1000, ge=100)
    seed: int = 2024


class PromotionSpec(_Section):
    margin: float = Field(0.01, ge=0, description="non-inferiority margin on the AUROC difference")
    slope_band: tuple[float, float] = (0.8, 1.25)
    max_subgroup_drop: float = Field(0.05, ge=0)
    auroc_floor: float = Field(0.70, ge=0, le=1, description="absolute floor for the first model")

    @model_validator(mode="after")
    def _band_ordered(self) -> PromotionSpec:
        _ordered(*self.slope_band, "slope_band")
        return self


class ScheduleSpec(_Section):
    """Checked here by Dagster's own rules (its cron and time zone parsers), so that a bad value is an error of
    this spec, not of the code location that would otherwise fail to build it."""

    enabled: bool = True
    cron: str = Field("0 2 * * *", description="five fields: minute hour day-of-month month day-of-week")
    timezone: str = Field("UTC", description="an IANA time zone name, e.g. Europe/Paris")

    @field_validator("cron")
    @classmethod
    def _cron_dagster_runs(cls, v: str) -> str:
        if not dagster_accepts(lambda dg: dg.ScheduleDefinition(name="spec", cron_schedule=v, job_name="spec")):
            raise ValueError(
                f"{v!r} is not a cron schedule Dagster can run: five fields (minute hour day-of-month "
                "month day-of-week) naming times that exist, e.g. '0 2 * * *' for 02:00 every day"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone_known(cls, v: str) -> str:
        if not dagster_accepts(
            lambda dg: dg.ScheduleDefinition(
                name="spec", cron_schedule="0 2 * * *", job_name="spec", execution_timezone=v
            )
        ):
            raise ValueError(f"{v!r} is not an IANA time zone name (e.g. UTC, Europe/Paris)")
        return v


class LandingSpec(_Section):
    ready: Literal["marker", "quiet"] = "marker"
    quiet_seconds: float = Field(60.0, ge=0)
    max_file_mb: float = Field(512.0, gt=0)
    folder: str | None = Field(
        None,
        description="omop: the folder under landing/ the task reads (default: landing/<task>/); tasks naming the "
        "same folder share its batches, and a batch one of them refuses stays there for the others (see "
        "ingestion/batches.py)",
    )

    @field_validator("folder")
    @classmethod
    def _folder_is_a_name(cls, v: str | None) -> str | None:
        if v is not None and (not TASK_NAME.match(v) or v in RESERVED_TASK_NAMES):
            raise ValueError("must be a folder name like a task's: lower-case letters, digits and underscores")
        return v

    @property
    def shared(self) -> bool:
        """Whether the folder is named, so other tasks may read it too: nothing is moved out of it."""
        return self.folder is not None


class TaskFamily(_Section):
    """The tasks one spec file expands into (an omop spec of several outcomes: one task per outcome), set by the
    loader (:meth:`TaskSpec.tasks`): the spec's name and every task's name. Never written in a spec."""

    name: str
    tasks: list[str]


class ImageSpec(_Section):
    # None: detected per batch from what landed (an .npz, DICOM files, or PNG / JPEG files with a labels.csv).
    format: Literal["folder", "dicom", "npz"] | None = None
    file_column: str = "file"
    size: Literal[28, 64, 128, 224] = 28
    channels: Literal[1, 3] = 1
    multi_label: bool = False
    augment: list[Literal["hflip", "vflip", "affine"]] = Field(default_factory=lambda: ["hflip", "affine"])
    max_pixels: int = Field(50_000_000, gt=0, description="decompression-bomb guard")
    # Decoded (in-memory) size, checked from headers before anything is decoded. Sized for a 24 GB machine running
    # two tasks at once (about 12 GB each): decoding holds a file's native array plus a float64 copy in the DICOM
    # LUT chain (up to 5x its decoded size, so 5 GB for 1 GB), and an npz is held whole while it is read; a batch of
    # 6 GB decoded is read file by file, and its npz arrays plus their records stay under half of the 12 GB.
    max_decoded_mb_per_file: float = Field(1024.0, gt=0, description="decoded size of one image file")
    max_decoded_mb_per_batch: float = Field(6144.0, gt=0, description="decoded size of all images of one batch")
    # Unset: the from-scratch ResNet18Small. A timm architecture name, or a list the tuner chooses among.
    backbone: str | list[str] | None = None
    backbone_kwargs: dict[
        str, int | float | str | bool | list[int] | dict[str, int | float | str | bool | list[int]]
    ] = Field(
        default_factory=dict,
        description="timm create_model arguments (e.g. depth, embed_dim of a small ViT); "
        "with a list of backbones, a mapping from backbone to its arguments",
    )
    backbone_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="the size the backbone runs at (images "
        "resized inside the model); unset: image.size rounded up to a multiple of 32",
    )
    # A local checkpoint (safetensors or torch state dict; relative to the spec file), "hub" / "hub:<timm name>"
    # (timm's pretrained download, online only), or one of these per backbone of a list.
    weights: str | dict[str, str] | None = None
    finetune: Literal["full", "linear_probe", "frozen_then_unfrozen"] = "full"

    @field_validator("backbone")
    @classmethod
    def _backbones_named(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a list of backbones must name at least one, each once")
        return v

    @field_validator("weights")
    @classmethod
    def _weights_found(cls, v: str | dict[str, str] | None, info: ValidationInfo) -> str | dict[str, str] | None:
        """Local weights files are resolved against the spec's folder and must exist."""

        def resolve(w: str) -> str:
            if names_hub(w):
                return w
            path = beside_spec(w, info)
            if not path.is_file():
                raise ValueError(f"weights file {w!r} not found")
            return str(path.resolve())

        return {k: resolve(w) for k, w in v.items()} if isinstance(v, dict) else resolve(v) if v else v

    @model_validator(mode="after")
    def _weights_for_backbones(self) -> ImageSpec:
        names = self.backbone_names()
        if self.weights and not names:
            raise ValueError("weights need a backbone (image.backbone)")
        if isinstance(self.weights, dict) and set(self.weights) - set(names):
            raise ValueError(f"weights for backbones not listed: {sorted(set(self.weights) - set(names))}")
        if isinstance(self.backbone, list) and self.backbone_kwargs:
            if set(self.backbone_kwargs) - set(names) or not all(
                isinstance(v, dict) for v in self.backbone_kwargs.values()
            ):
                raise ValueError(
                    "with a list of backbones, backbone_kwargs maps backbones of the list to their arguments"
                )
        elif any(isinstance(v, dict) for v in self.backbone_kwargs.values()):
            raise ValueError("backbone_kwargs: per-backbone arguments need a list of backbones")
        return self

    def backbone_names(self) -> list[str]:
        return [self.backbone] if isinstance(self.backbone, str) else list(self.backbone or [])

    def tuned(self, training: TrainingSpec) -> bool:
        """The model is searched for (imaging.tuning) when training asks, or when several backbones compete."""
        return training.tune or len(self.backbone_names()) > 1

    def kwargs_for(self, backbone: str) -> dict:
        if isinstance(self.backbone, list):
            return dict(self.backbone_kwargs.get(backbone) or {})
        return dict(self.backbone_kwargs)

    def weights_for(self, backbone: str) -> str | None:
        return self.weights.get(backbone) if isinstance(self.weights, dict) else self.weights


class VolumeIntensitySpec(_Section):
    """How voxel values become [0, 1]: a CT window in HU (``ct_window: [-1000, 400]``) or a per-volume percentile
    normalisation for MR (``percentile: [0.5, 99.5]``); exactly one."""

    ct_window: tuple[float, float] | None = None
    percentile: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeIntensitySpec:
        if (self.ct_window is None) == (self.percentile is None):
            raise ValueError("give exactly one of ct_window: [low, high] (HU) or percentile: [low, high]")
        low, high = self.ct_window or self.percentile
        if low >= high:
            raise ValueError(f"the lower bound {low} must be below the upper bound {high}")
        if self.percentile is not None and not 0 <= low < high <= 100:
            raise ValueError("percentiles must lie in [0, 100]")
        return self


class VolumeSpec(_Section):
    """A CT / MR volume per record (``modality: volume``): ``format`` is required, the rest has defaults."""

    format: Literal["npz", "dicom_series", "nifti"]
    size: Literal[16, 28, 32, 48, 64, 96, 128] = Field(28, description="volumes are resampled to size^3 voxels")
    spacing: tuple[float, float, float] | None = Field(
        None,
        description="target voxel spacing [z, y, x] in mm before the crop / pad to size^3; unset: the volume's own",
    )
    intensity: VolumeIntensitySpec | None = Field(None, description="unset: uint8 npz / 255, other formats min-max")
    orientation: Literal["RAS", "LPS"] = "RAS"
    file_column: str = Field("file", description="labels.csv column naming each record's series folder or file")
    max_voxels: int = Field(
        512 * 512 * 1024, gt=0, description="declared voxels of one volume, checked before any voxel is decoded"
    )
    max_decoded_mb_per_batch: float = Field(6144.0, gt=0, description="decoded size of all volumes of one batch")
    augment: list[Literal["hflip", "vflip", "dflip", "affine", "intensity"]] = Field(
        default_factory=lambda: ["hflip", "affine", "intensity"],
        description="flips along x / y / z, a small rotation, scaling and shift, intensity scale and shift",
    )
    model: Literal["resnet10", "resnet18"] = Field(
        "resnet10",
        description="the 3D ResNet trained from scratch (ResNet-10 by default: twice ResNet-18's epochs in the "
        "same CPU minutes, bench/README.md)",
    )
    conv: Literal["3d", "acs", "2.5d"] = Field(
        "3d",
        description="its k^3 convolutions: full 3D kernels, ACS (2D kernels, a third of the channels in each of "
        "the axial, coronal and sagittal planes) or 2.5D (2D kernels in the axial plane)",
    )
    pool: Literal["avg", "avgmax"] = Field(
        "avg",
        description="its head's global pooling of the last feature map: the average, or the average and the "
        "maximum concatenated (avgmax: a small bright finding is not averaged away; bench/README.md)",
    )
    width: int | None = Field(
        None, ge=4, le=128, description="its base width; unset: chosen from the data size and the device"
    )
    candidate: Literal["auto", "cnn"] = Field(
        "auto",
        description="auto: the CNN or the voxel-feature model (pooled voxels and intensity statistics), the higher "
        "validation AUROC; cnn: always the CNN (Grad-CAM and ONNX export need it)",
    )

    @field_validator("spacing")
    @classmethod
    def _spacing_positive(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError("every spacing must be above 0 mm")
        return v


class TextEncoderSpec(_Section):
    """Fine-tuning of the ``text_model`` encoder: issue 16's recipe (AdamW, one-cycle, 256 tokens) with a
    mean-pooled head trained at its own, higher learning rate (bench/README.md: the measured gain)."""

    max_length: int = Field(256, ge=8, le=4096, description="tokens per text; longer texts are truncated")
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="what the new head reads: the mean of the token "
        "states (what sentence-transformers checkpoints are trained for) or "
        "the first ([CLS]) token's state",
    )
    lora: bool = Field(False, description="train LoRA adapters on the attention projections (peft) and the head")
    lora_rank: int = Field(8, ge=1)
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(8e-5, gt=0, description="the one-cycle peak; the first trial's, the search's centre")
    head_learning_rate: float = Field(
        2e-3,
        gt=0,
        description="the new head's one-cycle peak: it starts from random weights, the encoder from pretrained ones",
    )
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    trials: int = Field(
        1,
        ge=1,
        description="optuna trials over learning rate, weight decay and warm-up, pruned "
        "on per-epoch validation macro-F1; all within training.time_budget_s",
    )


class TaskSpec(_Section):
    name: str
    modality: str
    description: str = ""
    label: str
    # Label values are kept in canonical_label text form, whatever YAML type they were written in.
    positive: Label | None = None
    classes: list[Label] | None = None
    id: str = Field(
        ROW_ID, description=f"record id column; without one, tabular rows get {ROW_ID} = <batch>/<file>#<row>"
    )
    patient_id: str | None = None
    subgroups: list[str] = Field(default_factory=list)
    # Tabular: declared feature columns; undeclared columns are inferred from their type.
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list, description="columns never used as features")
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    null_values: dict[str, list[float | str]] = Field(
        default_factory=dict, description="per column, codes that mean 'not recorded' (e.g. cholesterol 0)"
    )
    max_null_rate: float = Field(0.5, ge=0, le=1)
    # Text: the column holding the free text.
    text: str | None = None
    min_text_chars: int = Field(3, ge=1)
    # A Hugging Face model folder (relative to the spec file, or absolute) or ``hub:<id>`` (downloaded only so
    # named, when online): fine-tuned as a classifier that competes with the TF-IDF baseline and the n-gram model.
    text_model: str | None = None
    text_encoder: TextEncoderSpec = Field(default_factory=TextEncoderSpec)
    image: ImageSpec | None = None
    # OMOP (modality: omop): the target cohort, the outcome, the time at risk and the covariate settings
    # (omop/spec.py: CohortSpec, Outcome, TimeAtRisk, CovariateSettings; README "OMOP CDM tasks").
    cohort: Any = None
    outcomes: Any = None
    time_at_risk: Any = None
    covariates: Any = None
    volume: VolumeSpec | None = None
    owner: str = Field("team:diagnostics", description="the assets' owner: an email address or team:<name>")
    split: SplitSpec = Field(default_factory=SplitSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    landing: LandingSpec = Field(default_factory=LandingSpec)
    family: TaskFamily | None = None  # set by tasks(), never by a spec

    @model_validator(mode="before")
    @classmethod
    def _omop_defaults(cls, data: Any) -> Any:
        """An omop task's records are one row per person (``person_id``) with its 0/1 ``outcome``."""
        if isinstance(data, dict) and data.get("modality") == "omop":
            return {**OMOP_DEFAULTS, **data}
        return data

    @field_validator(*OMOP_KEYS)
    @classmethod
    def _omop_study(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        try:
            models = importlib.import_module(OMOP_SPEC_MODULE)
        except ImportError as exc:  # the MEDS schema package of the omop extra
            raise ValueError(f"omop tasks need the omop extra (pip install 'meddiag_pipelines[omop]'): {exc}") from None
        if info.field_name == "outcomes":
            outcomes = [models.Outcome.model_validate(o) for o in (v if isinstance(v, list) else [v])]
            names = [o.name for o in outcomes]
            if not outcomes or len(set(names)) != len(names):
                raise ValueError("give one or more outcomes, each under its own name")
            return outcomes
        model = {"cohort": models.CohortSpec, "time_at_risk": models.TimeAtRisk, "covariates": models.CovariateSettings}
        return model[info.field_name].model_validate(v)

    @field_validator("family")
    @classmethod
    def _family_is_the_loaders(cls, v: TaskFamily | None) -> TaskFamily | None:
        if v is not None:
            raise ValueError("is set by the loader when a spec holds several outcomes, never written in a spec")
        return v

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not TASK_NAME.match(v):
            raise ValueError("must be lower-case letters, digits and underscores, starting with a letter")
        if v in RESERVED_TASK_NAMES:
            raise ValueError(
                f"{v!r} is reserved (a DuckDB catalog or schema, or the {SPEC_ERRORS_GROUP} group); choose another name"
            )
        return v

    @field_validator("modality")
    @classmethod
    def _modality_registered(cls, v: str) -> str:
        if v not in MODALITIES:
            raise ValueError(f"Input should be a registered modality: {', '.join(map(repr, sorted(MODALITIES)))}")
        return v

    @field_validator("owner")
    @classmethod
    def _ownerdagster_accepts(cls, v: str) -> str:
        if not dagster_accepts(lambda dg: dg.AssetSpec("spec", owners=[v])):
            raise ValueError(f"{v!r} is not an owner Dagster accepts: an email address or 'team:<name>'")
        return v

    @field_validator("text_model")
    @classmethod
    def _text_model_resolved(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A local folder is made absolute against the spec file's folder (``load_spec`` passes it)."""
        if v is None or v.startswith(HUB_PREFIX):
            if v is not None and not v[len(HUB_PREFIX) :].strip():
                raise ValueError(f"'{HUB_PREFIX}' must be followed by a model id")
            return v
        if not v.strip():
            raise ValueError("must name a model folder or hub:<id>")
        return str(beside_spec(v, info))

    @field_validator("ranges")
    @classmethod
    def _ranges_ordered(cls, v: dict) -> dict:
        for column, (low, high) in v.items():
            _ordered(low, high, f"range of {column!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.modality == "text" and not self.text:
            raise ValueError("text tasks need the 'text' key naming the text column")
        if self.text_model is not None and self.modality != "text":
            raise ValueError("text_model is for text tasks only")
        given = [key for key in OMOP_KEYS if getattr(self, key) is not None]
        if self.modality == "omop" and (self.cohort is None or self.outcomes is None):
            raise ValueError("omop tasks need 'cohort' (the target cohort) and 'outcomes' (the outcome)")
        if self.modality != "omop" and given:
            raise ValueError(f"{', '.join(given)}: for omop tasks only")
        if self.modality != "omop" and self.landing.folder is not None:
            raise ValueError("landing.folder: for omop tasks only (the other modalities read landing/<task>/)")
        too_long = [t for t in self._task_names() if not TASK_NAME.match(t)]
        if too_long:
            raise ValueError(
                f"outcomes: the task of each outcome is named <name>{FAMILY_SEPARATOR}<outcome>, at most 63 "
                f"characters; shorten the spec's name or the outcome's ({too_long[0]!r} is too long)"
            )
        if self.modality == "image" and self.image is None:
            self.image = ImageSpec()
        if (self.modality == "volume") != (self.volume is not None):
            raise ValueError(
                "volume tasks need the 'volume' section naming its format (npz, dicom_series or "
                "nifti), and only they have one"
            )
        if self.modality == "volume":
            self.training = _volume_training(self.training, self.volume.size)
        if self.positive is not None and self.classes and self.positive not in self.classes:
            raise ValueError(f"positive class {self.positive!r} is not among classes {self.classes}")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise ValueError("classes must list at least two distinct labels")
        roles = [key for key in ("id", "patient_id", "text") if getattr(self, key) == self.label]
        roles += [key for key in ("numeric", "categorical", "exclude") if self.label in getattr(self, key)]
        if roles:
            raise ValueError(
                f"the label column {self.label!r} is also named by {', '.join(roles)}; the label must be "
                "a column of its own (a model must never see it, nor an id take its place)"
            )
        return self

    @property
    def is_binary(self) -> bool:
        return self.positive is not None

    @property
    def landing_folder(self) -> str:
        """The folder under ``landing/`` the task reads its batches from."""
        return self.landing.folder or self.name

    def _task_names(self) -> list[str]:
        outcomes = self.outcomes or []
        if len(outcomes) < 2:
            return [self.name]
        return [f"{self.name}{FAMILY_SEPARATOR}{o.name}" for o in outcomes]

    def tasks(self) -> list[TaskSpec]:
        """The tasks of this spec: itself, or, for an omop spec of several outcomes, one task per outcome, named
        ``<name>__<outcome>``, each holding its one outcome, reading the spec's landing folder
        (``landing.folder``, default the spec's name) and knowing its family (the comparison report's)."""
        names = self._task_names()
        if len(names) == 1:
            return [self]
        landing = self.landing.model_copy(update={"folder": self.landing_folder})
        family = TaskFamily(name=self.name, tasks=names)
        return [
            self.model_copy(update={"name": name, "outcomes": [outcome], "landing": landing, "family": family})
            for name, outcome in zip(names, self.outcomes, strict=True)
        ]


VOLUME_TRAINING = {"epochs": 12, "time_budget_s": 780.0, "batch_size": 32}
# A default training batch holds at most this many voxels: 8 volumes at 64^3 (~1.5 GB of activations at width 8,
# against ~4 GB for 32), every one of the 32 up to 40^3 (bench/README.md, Volumes: memory).
VOLUME_BATCH_VOXELS = 8 * 64**3


def volume_batch_size(size: int) -> int:
    """The default training batch of ``size``^3 volumes: 32 (MedMNIST v2's), fewer where 32 would hold more than
    :data:`VOLUME_BATCH_VOXELS` voxels (18 at 48^3, 8 at 64^3), never under 2 (batch norm needs two)."""
    return max(2, min(VOLUME_TRAINING["batch_size"], VOLUME_BATCH_VOXELS // size**3))


def _volume_training(training: TrainingSpec, size: int) -> TrainingSpec:
    """Volume tasks' defaults where the spec leaves them: a 28^3 set of ~1,300 volumes trains within 13 minutes
    of 2 CPU cores, so the whole run fits 20; batches of 32 volumes (MedMNIST v2's), not the images' 128: four
    times the optimiser steps in the same CPU time, which a few hundred volumes need (bench/README.md, Volumes);
    at large sizes fewer (:func:`volume_batch_size`), so a step's activations fit a small machine's memory."""
    defaults = {**VOLUME_TRAINING, "batch_size": volume_batch_size(size)}
    unset = {k: v for k, v in defaults.items() if k not in training.model_fields_set}
    return training.model_copy(update=unset) if unset else training


def spec_columns(records: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """The image and text readers name their key columns id / label / patient_id / text; the warehouse uses the
    spec's names."""
    names = {"id": spec.id, "label": spec.label, "patient_id": spec.patient_id, "text": spec.text}
    return records.rename({k: v for k, v in names.items() if v and k != v and k in records.columns})


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"key '{key}': {e['msg']}")
    return "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, except that a key written twice in one mapping is an error (PyYAML keeps
    the last silently; keys brought in by a ``<<`` merge may still be overridden, as YAML intends), and that
    only ``true``/``false`` are booleans, as in YAML 1.2: ``positive: yes`` names the class ``yes``, not
    ``"1"`` (boolean keys such as ``enabled: no`` still read as booleans through pydantic)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key is refused by SafeLoader itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _safe_yaml(text: str) -> object:
    """One YAML document through :class:`_UniqueKeyLoader` (what ``yaml.safe_load`` does with ``SafeLoader``)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's own message quotes the offending line of the file; this names its place and the problem only."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__

    def at(mark) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""

    problem = f"{exc.problem or 'not valid YAML'}{at(exc.problem_mark)}"
    return f"{problem} ({exc.context}{at(exc.context_mark)})" if exc.context else problem


def load_spec(path: Path) -> TaskSpec:
    """Read and validate one spec file; every failure names the file."""
    if not path.is_file():  # a FIFO named *.yaml would block the code location for ever
        raise SpecError(path, "not a regular file")
    try:
        raw = _safe_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(path, f"cannot read YAML: {_yaml_problem(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, f"cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(path, f"a spec must be a YAML mapping, got {type(raw).__name__}")
    try:
        return TaskSpec.model_validate(raw, context={"spec_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise SpecError(path, _describe(exc)) from exc


def spec_dirs() -> list[Path]:
    dirs = [BUNDLED_TASKS_DIR]
    extra = os.environ.get("MEDDIAG_TASKS_DIR")
    if extra:
        dirs.append(Path(extra))
    return dirs


@dataclass(frozen=True)
class SpecScan:
    """The usable specs of the spec folders, the file of each (by task name), and an error for each spec file
    that is not usable."""

    specs: list[TaskSpec]
    errors: list[SpecError]
    files: dict[str, Path]


def _clash(spec: TaskSpec, specs: dict[str, tuple[TaskSpec, Path]], taken: dict[str, tuple[bool, Path]]) -> str:
    """Why the tasks of ``spec`` cannot join those already loaded (``specs``: task -> spec and file; ``taken``:
    each name in use as a task, spec or landing folder -> whether it is a landing folder that tasks share, and
    its file), or ``""``. A folder is shared only by tasks that all name it (``landing.folder``); the spec's name
    of several tasks names their comparison report's folder, so it is taken too."""
    tasks = spec.tasks()
    for task in tasks:
        if task.name in specs:
            return f"key 'name': task {task.name!r} is already defined in {specs[task.name][1]}"
    names = {spec.name, *(t.name for t in tasks)} - {spec.landing.folder}
    for name in sorted(names):
        if name in taken:
            return f"key 'name': {name!r} is already a task, spec or landing folder of {taken[name][1]}"
    folder = spec.landing_folder
    if folder in taken and not (taken[folder][0] and tasks[0].landing.shared):
        return f"key 'landing.folder': landing/{folder}/ is already read by {taken[folder][1]} and is not shared"
    return ""


def scan_specs(dirs: list[Path] | None = None) -> SpecScan:
    """Every task of every spec that loads, bundled first (an omop spec of several outcomes gives one task per
    outcome: :meth:`TaskSpec.tasks`); a bad file (or a name already used, or a missing folder) becomes an error
    of its own and never hides the good specs."""
    specs: dict[str, tuple[TaskSpec, Path]] = {}
    taken: dict[str, tuple[bool, Path]] = {}
    errors: list[SpecError] = []
    for folder in dirs if dirs is not None else spec_dirs():
        if not folder.is_dir():
            errors.append(SpecError(folder, "MEDDIAG_TASKS_DIR is not a folder"))
            continue
        for path in sorted(folder.glob("*.yaml")):
            try:
                spec = load_spec(path)
            except SpecError as exc:
                errors.append(exc)
                continue
            if problem := _clash(spec, specs, taken):
                errors.append(SpecError(path, problem))
                continue
            tasks = spec.tasks()
            for name in {spec.name, *(t.name for t in tasks)}:
                taken.setdefault(name, (False, path))
            taken[spec.landing_folder] = (tasks[0].landing.shared, path)
            specs.update((task.name, (task, path)) for task in tasks)
    return SpecScan([s for s, _ in specs.values()], errors, {name: path for name, (_, path) in specs.items()})
