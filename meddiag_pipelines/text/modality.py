"""The text modality (:class:`~meddiag_pipelines.modalities.base.Modality`). Logic lives in
``meddiag_pipelines/text`` (readers that scrub PHI at read, models, explanations) and
``meddiag_pipelines/text/validation.py`` (the checks).

The raw text never reaches the warehouse: the reader scrubs each text right after decoding it, and only the
scrubbed text is appended. Files the reader rejects (bad encoding, unreadable format) are quarantined one by
one while the rest of their batch flows on. ``candidate_model`` trains both text models once (TF-IDF + LR
baseline and the fastText-style torch model) and keeps the better on validation; ``baseline_model`` points at
the baseline trained in that same call, so nothing is trained twice.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from meddiag_pipelines import labels
from meddiag_pipelines.device import torch_device
from meddiag_pipelines.ingestion.batches import ReadOutcome, Validator
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.modalities.base import (
    BuiltFeatures,
    CheckOutcome,
    Descriptions,
    Explainer,
    ExtraCheck,
    Modality,
    PredictorFactory,
    Storage,
    TrainedModel,
    TrainingRun,
)
from meddiag_pipelines.specs import HUB_PREFIX, TaskSpec, spec_columns
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.text.models import (
    class_probabilities,
    embed_texts,
    explain_texts,
    texts_of,
    train_text_models,
)
from meddiag_pipelines.text.readers import read_text_batch
from meddiag_pipelines.text.report import missing_texts, top_terms_html
from meddiag_pipelines.text.validation import text_duplicates, unreadable_files, validate_texts
from meddiag_pipelines.validation.suites import CheckFailure

if TYPE_CHECKING:
    from meddiag_pipelines.registry.export import ModelExport, VersionToExport

MODEL_NAMES = {"baseline": "tfidf_logistic_regression", "neural": "fasttext_torch", "encoder": "hf_encoder"}
FRAMEWORKS = {"baseline": "scikit-learn", "neural": "torch", "encoder": "transformers"}


def _text_predictor(plan: dict):
    def predict(model_dir, rows: pl.DataFrame) -> np.ndarray:
        return class_probabilities(Path(model_dir), texts_of(rows, plan["text_column"]), plan.get("binary", True))

    return predict


def _explain(model_dir, rows: pl.DataFrame, plan: dict) -> list[list[tuple[str, float]]]:
    """The words of each (scrubbed) text that pushed it toward its predicted class, by occlusion."""
    return explain_texts(Path(model_dir), texts_of(rows, plan["text_column"]))


class TextReader:
    """Reads one run's batches, counting the texts cut to the spec's length."""

    def __init__(self):
        self.truncated = 0

    def __call__(self, batch: LandedBatch, spec: TaskSpec) -> ReadOutcome:
        result = read_text_batch(batch.path, spec)
        self.truncated += result.truncated
        return ReadOutcome(
            spec_columns(result.records, spec), list(result.rejected), files_read=list(result.files_read)
        )

    def metadata(self) -> dict:
        return {"truncated_texts": self.truncated}


class TextModality(Modality):
    name = "text"
    candidate_kinds = frozenset({"pytorch", "scikitlearn"})
    baseline_trained_by_candidate = True

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        return Descriptions(
            raw_records="new landed batches (CSV, Parquet, JSONL or .txt files + labels.csv), PHI scrubbed at read "
            "and only the scrubbed text appended to the warehouse; files that cannot be decoded as UTF-8 or read "
            "are quarantined one by one.",
            validated_records="rows of every batch that passed the text checks (GX suite: columns, unique ids, "
            "label domain; texts long enough and cleanly decoded).",
            suite="The text checks over all validated rows (columns, label domain, unique ids across batches, texts "
            f"not empty nor shorter than {spec.min_text_chars} characters, no decoding damage).",
            features="the scrubbed text as is beside the keys and split (the models build their own n-gram "
            "features, fitted on training rows only).",
            feature_plan="which column holds the text the models read.",
            candidate_model="trains the TF-IDF + logistic-regression baseline, a fastText-style torch model and, "
            "when the spec names a text_model, that pretrained Hugging Face encoder fine-tuned (optuna-tuned, CUDA "
            "when present) once, and keeps the best on validation macro-F1 (a tie goes to the simpler model); all "
            "saved in safe formats in the registry's staging area.",
            baseline_model="the TF-IDF (word 1-2-grams, char 2-5-grams) + logistic-regression baseline every model "
            "is compared with; trained by candidate_model in the same call (never twice), this asset points at it.",
        )

    # -- ingestion ------------------------------------------------------------------------------------------------
    def reader(self, spec: TaskSpec) -> TextReader:
        return TextReader()

    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        return validate_texts

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        return validate_texts(records, spec)

    def extra_checks(self, spec: TaskSpec) -> list[ExtraCheck]:
        def unreadable_files_quarantined(storage: Storage, _) -> CheckOutcome:
            root = storage.root
            n_rejected, failures = unreadable_files(
                storage.warehouse.ledger(spec.name),
                storage.root.quarantine(spec.name),
                lambda path: root.exists(root.relative(path)),
            )
            return CheckOutcome(failures, metadata={"rejected_files": n_rejected})

        def texts_unique_across_splits(storage: Storage, split: pl.DataFrame) -> CheckOutcome:
            duplicates = text_duplicates(split, spec)
            return CheckOutcome(duplicates.failures(spec), duplicates.summary(), duplicates.metadata())

        return [
            ExtraCheck(
                "unreadable_files_quarantined",
                "raw_records",
                "Every landed file the reader rejected (not "
                "UTF-8, unreadable) is in quarantine with its reason and counted in the ledger; the good "
                "files of its batch flow on.",
                True,
                unreadable_files_quarantined,
            ),
            ExtraCheck(
                "texts_unique_across_splits",
                "split",
                "Duplicated texts (Unicode, case and blanks folded) "
                "and identical texts with conflicting labels are counted; it fails only if copies of one text "
                "sit in more than one of train / val / test, which would leak training data into the test.",
                True,
                texts_unique_across_splits,
            ),
        ]

    # -- features and models --------------------------------------------------------------------------------------
    def features(self, spec: TaskSpec, split: pl.DataFrame, storage: Storage) -> BuiltFeatures:
        frame = split.select(*key_columns_in(split, spec), pl.col(spec.text).cast(pl.String))
        plan = {
            "modality": "text",
            "text_column": spec.text,
            "min_text_chars": spec.min_text_chars,
            "scrubbed_at_read": True,
            "binary": spec.is_binary,
        }
        lengths = frame[spec.text].str.len_chars()
        meta = {
            "n_rows": frame.height,
            "median_text_chars": float(lengths.median() or 0),
            "max_text_chars": int(lengths.max() or 0),
        }
        return BuiltFeatures(frame, plan, meta, {"text_column": spec.text})

    def train_candidate(
        self, spec: TaskSpec, features: pl.DataFrame, feature_plan: dict, run: TrainingRun
    ) -> TrainedModel:
        out = run.out_dir
        classes = labels.class_list(spec, features)
        train = features.filter(pl.col(SPLIT_COLUMN) == "train")
        val = features.filter(pl.col(SPLIT_COLUMN) == "val")
        column = feature_plan["text_column"]
        result = train_text_models(
            texts_of(train, column),
            labels.encode_labels(train[spec.label], classes),
            texts_of(val, column),
            labels.encode_labels(val[spec.label], classes),
            classes,
            spec,
            out,
            device=torch_device(),
        )
        chosen = json.loads((out / "chosen.json").read_text(encoding="utf-8"))
        params = {
            "chosen": result.chosen,
            **{f"val_macro_f1_{m}": f1 for m, f1 in result.val_scores.items()},
            "baseline_C": chosen["baseline_C"],
            "temperature": chosen["temperature"][result.chosen],
            "epochs": spec.training.epochs,
            "batch_size": spec.training.batch_size,
            "learning_rate": spec.training.learning_rate,
            "patience": spec.training.patience,
            "time_budget_s": spec.training.time_budget_s,
        }
        if spec.text_model is not None:  # the encoder's settings; its search's best trial shows in the card
            shown = spec.text_model if spec.text_model.startswith(HUB_PREFIX) else Path(spec.text_model).name
            params.update(
                {
                    "text_model": shown,
                    "text_encoder": spec.text_encoder.model_dump(),
                    "tuning": chosen["tuning"]["encoder"],
                }
            )
        meta = {
            "name": MODEL_NAMES[result.chosen],
            "framework": FRAMEWORKS[result.chosen],
            "params": params,
            "val_score": result.val_scores[result.chosen],
            "classes": classes,
            "device": result.device,
        }
        return TrainedModel(
            out,
            meta,
            feature_plan,
            {"train_seconds": round(result.seconds, 1), "chosen": result.chosen, "device": result.device},
        )

    def baseline_of_candidate(self, spec: TaskSpec, candidate_dir: Path, candidate: dict) -> TrainedModel:
        chosen = json.loads((candidate_dir / "chosen.json").read_text(encoding="utf-8"))
        meta = {
            "name": MODEL_NAMES["baseline"],
            "framework": FRAMEWORKS["baseline"],
            "params": {"C": chosen["baseline_C"], "temperature": chosen["temperature"]["baseline"]},
            "val_score": chosen["val_macro_f1"]["baseline"],
            "classes": candidate["classes"],
            "device": "cpu",
        }
        return TrainedModel(candidate_dir / "baseline", meta, candidate["plan"])

    # -- scoring and the report -----------------------------------------------------------------------------------
    def predictor_factory(self, spec: TaskSpec) -> PredictorFactory:
        return _text_predictor

    def explainer(self, spec: TaskSpec) -> Explainer:
        return _explain

    def embed(self, spec: TaskSpec, model_dir: Path, plan: dict, rows: pl.DataFrame) -> np.ndarray:
        """The model's representation of each text: the encoder's pooled states, the fastText model's mean n-gram
        embedding, or the baseline's TF-IDF vector through a fixed random projection (``text.models``)."""
        return embed_texts(Path(model_dir), texts_of(rows, plan["text_column"]))

    def missing_data(self, spec: TaskSpec, train_rows: pl.DataFrame, plan: dict) -> list[dict]:
        return missing_texts(train_rows, plan["text_column"])

    def card_extras(self, spec: TaskSpec, candidate: dict) -> list[tuple[str, str]]:
        return [("Top terms per class", top_terms_html(Path(candidate["dir"])))]

    def exportable(self, version: "VersionToExport") -> "ModelExport":
        from meddiag_pipelines.text.export import exportable

        return exportable(version)


MODALITY = TextModality()
