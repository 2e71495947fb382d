"""What a modality provides: :class:`Modality`. The Dagster wiring (``defs/assets/task_assets.py``) is written
once against it, for every registered modality (``modalities/registry.py``).

A modality returns plain data (frames, dicts, lists of failures, :class:`Table` rows) and never imports
Dagster; ``defs`` turns what it returns into asset values, metadata and check results. The ``storage`` it is
given is the storage resource, used only through :class:`Storage`; the ``log`` is the step's logger (anything
with ``info`` and ``warning``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import polars as pl

from meddiag_pipelines.ingestion.batches import ReadOutcome, Validator
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.validation.suites import CheckFailure

if TYPE_CHECKING:
    from meddiag_pipelines.registry.export import ModelExport, VersionToExport
    from meddiag_pipelines.registry.store import ModelRegistry

# predictor_factory(plan) -> predict(model_dir, rows) -> probabilities
Predictor = Callable[[Path, pl.DataFrame], np.ndarray]
PredictorFactory = Callable[[dict], Predictor]
# explain(model_dir, rows, plan) -> per row, the top (feature, contribution) pairs
Explainer = Callable[[Path, pl.DataFrame, dict], list[list[tuple[str, float]]]]
# embed(model_dir, plan, rows) -> the model's (rows, dimensions) embeddings, or None (Modality.embed)
Embedder = Callable[[Path, dict, pl.DataFrame], "np.ndarray | None"]


class Storage(Protocol):
    """Where a task's data lives, as a modality may use it (the storage resource satisfies it): the data root
    (its files and the layout's folders), and the warehouse and model registry built on it."""

    @property
    def root(self) -> DataRoot: ...

    @property
    def warehouse(self) -> Warehouse: ...

    @property
    def registry(self) -> ModelRegistry: ...


class Log(Protocol):
    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


class BatchReader(Protocol):
    """Reads one landed batch (``ingestion.batches.Reader``); ``metadata()``: what the reads of one run add to
    raw_records' metadata (counts only, never record content)."""

    def __call__(self, batch: LandedBatch, spec: TaskSpec) -> pl.DataFrame | ReadOutcome: ...

    def metadata(self) -> dict: ...


@dataclass
class PlainReader:
    """A reader function that adds nothing to the metadata."""

    read: Callable[[LandedBatch, TaskSpec], pl.DataFrame | ReadOutcome]

    def __call__(self, batch: LandedBatch, spec: TaskSpec) -> pl.DataFrame | ReadOutcome:
        return self.read(batch, spec)

    def metadata(self) -> dict:
        return {}


@dataclass(frozen=True)
class Table:
    """Rows (dicts with the same keys) that the UI shows as a table."""

    rows: list[dict]


@dataclass(frozen=True)
class Descriptions:
    """What the UI says of each step of a task (``defs`` prefixes the asset descriptions with the task name)."""

    raw_records: str
    validated_records: str
    suite: str  # the blocking check over all validated rows
    features: str
    feature_plan: str
    candidate_model: str
    baseline_model: str


@dataclass(frozen=True)
class CheckOutcome:
    """A check's result: it passes when there are no failures."""

    failures: list[CheckFailure]
    description: str | None = None
    metadata: dict = field(default_factory=dict)
    warn_only: bool = False  # worth a look, never an error
    table: bool = True  # the failures' count and table in the metadata


@dataclass(frozen=True)
class ExtraCheck:
    """A check of a modality beyond the suite: on ``raw_records`` (``run(storage, None)``; per batch), on
    ``validated_records`` (``run(storage, rows)``; per batch) or on ``split`` (``run(storage, split)``)."""

    name: str
    asset: Literal["raw_records", "validated_records", "split"]
    description: str
    blocking: bool
    run: Callable[[Storage, pl.DataFrame | None], CheckOutcome]


class FeaturesRefused(ValueError):
    """A modality's features step finds nothing a model can learn from. Its message says why in plain words and
    counts (never record content): for a task of a family the wiring records it as why the task has no model."""


@dataclass
class BuiltFeatures:
    """The features step's outputs: the rows the models read (keys and split kept) and the plan that makes them
    (JSON-able), with their metadata, and warnings a person should see (names files and columns, never
    values)."""

    frame: pl.DataFrame
    plan: dict
    metadata: dict
    plan_metadata: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainingRun:
    """What a training step may use: the storage, the (staging) folder to write the model into, the step's
    logger and, when this run re-executes a failed one, that run's id (to resume from its checkpoint)."""

    storage: Storage
    out_dir: Path
    log: Log
    parent_run_id: str | None = None


@dataclass
class TrainedModel:
    """A trained model: its folder (under the data root), ``meta`` (``name``, ``framework``, ``params``,
    ``val_score``, ``classes``, ``device``), the plan scoring needs, and metadata for the UI."""

    model_dir: Path
    meta: dict
    plan: dict
    metadata: dict = field(default_factory=dict)


class Modality(ABC):
    """One kind of data (tabular records, images, texts...): how its batches are read and checked, its features
    built, its models trained and used, and what its reports add."""

    name: ClassVar[str]  # the spec's ``modality``
    run_priority: ClassVar[str] = "0"  # dagster/priority of its runs: cheap ones first when runs queue (dagster.yaml)
    feature_kinds: ClassVar[frozenset[str]] = frozenset({"polars"})
    candidate_kinds: ClassVar[frozenset[str]] = frozenset()
    baseline_kinds: ClassVar[frozenset[str]] = frozenset({"scikitlearn"})
    gpu_candidate: ClassVar[bool] = False  # the candidate step asks the Dask executor for a GPU worker (training.gpu)
    predefined_split: ClassVar[str | None] = None  # a column holding the data's own split, kept where set
    # True: candidate_model trains the baseline too (baseline_of_candidate points at it); False: the baseline
    # step trains it from the features (train_baseline).
    baseline_trained_by_candidate: ClassVar[bool] = False

    @abstractmethod
    def descriptions(self, spec: TaskSpec) -> Descriptions: ...

    # -- ingestion ------------------------------------------------------------------------------------------------
    @abstractmethod
    def reader(self, spec: TaskSpec) -> BatchReader:
        """A reader for one run of raw_records (it may count what it reads)."""

    @abstractmethod
    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        """The per-batch validator; it may look at batches validated before through ``storage``."""

    @abstractmethod
    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        """The blocking check over every validated row (``records`` is not empty)."""

    def extra_checks(self, spec: TaskSpec) -> list[ExtraCheck]:
        return []

    def finish_split(self, spec: TaskSpec, frame: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
        """The modality's own last step of the split: (frame, metadata)."""
        return frame, {}

    # -- features and models --------------------------------------------------------------------------------------
    @abstractmethod
    def features(self, spec: TaskSpec, split: pl.DataFrame, storage: Storage) -> BuiltFeatures: ...

    @abstractmethod
    def train_candidate(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        """Train into ``run.out_dir``; the model kept is the candidate."""

    def baseline_of_candidate(self, spec: TaskSpec, candidate_dir: Path, candidate: dict) -> TrainedModel:
        """The baseline candidate_model trained beside the candidate (``baseline_trained_by_candidate``)."""
        raise NotImplementedError(f"modality {self.name!r}: its candidate step does not train the baseline")

    def train_baseline(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        """Train the baseline into ``run.out_dir`` (unless ``baseline_trained_by_candidate``)."""
        raise NotImplementedError(f"modality {self.name!r}: its baseline is trained by its candidate step")

    # -- scoring and the report -----------------------------------------------------------------------------------
    @abstractmethod
    def predictor_factory(self, spec: TaskSpec) -> PredictorFactory:
        """``factory(plan)(model_dir, rows) -> probabilities`` for any model this modality trained."""

    def explainer(self, spec: TaskSpec) -> Explainer | None:
        """Per scored row, what pushed its score (None: predictions carry no explanation)."""
        return None

    def embed(self, spec: TaskSpec, model_dir: Path, plan: dict, rows: pl.DataFrame) -> np.ndarray | None:
        """The model's own (rows, dimensions) embeddings of ``rows`` (as ``predictor_factory(plan)`` reads them),
        for embedding drift (``monitoring``): a sample of the validation rows' is frozen with the version, each
        scored batch's is tested against it. None: this modality is watched through its columns only."""
        return None

    def missing_data(self, spec: TaskSpec, train_rows: pl.DataFrame, plan: dict) -> list[dict]:
        """The report's missing-data table over the training rows."""
        return []

    def card_extras(self, spec: TaskSpec, candidate: dict) -> list[tuple[str, str]]:
        """(title, HTML) report sections about the candidate model."""
        return []

    def extra_metrics(self, spec: TaskSpec, candidate: dict, split: pl.DataFrame) -> dict:
        """Entries this modality adds to ``metrics.json`` (JSON-able aggregates, never record content), before the
        report and ``test_sections`` see the metrics."""
        return {}

    def test_sections(
        self, spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict
    ) -> list[tuple[str, str]]:
        """(title, HTML) report sections that need the test rows and their scores (e.g. saliency maps)."""
        return []

    def family_report(self, spec: TaskSpec, storage: Storage) -> None:
        """After each champion decision of a task of a family (``spec.family``: the tasks one spec file expands
        into, e.g. an omop spec's one task per outcome), write the report comparing the family's tasks under
        ``reports/<family>/``; nothing by default."""
        return None

    # -- export ---------------------------------------------------------------------------------------------------
    def exportable(self, version: VersionToExport) -> ModelExport | None:
        """A published version's model as ONNX (``meddiag registry export``), or ``ExportRefused`` naming what to
        use instead; None: this modality has no export."""
        return None
