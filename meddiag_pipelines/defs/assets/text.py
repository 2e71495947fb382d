"""The asset graph of one text task (group = task name), wired like ``defs/assets/tabular.py``. Logic lives in
``meddiag_pipelines/text`` (readers that scrub PHI at read, models, explanations) and
``meddiag_pipelines/text/validation.py`` (the checks); this file only wires inputs, resources and metadata.

The raw text never reaches the warehouse: the reader scrubs each text right after decoding it, and only the
scrubbed text is appended. Files the reader rejects (bad encoding, unreadable format) are quarantined one by
one while the rest of their batch flows on. ``candidate_model`` trains both text models once (TF-IDF + LR
baseline and the fastText-style torch model) and keeps the better on validation; ``baseline_model`` points at
the baseline trained in that same call, so nothing is trained twice.
"""

import json
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
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.ingestion.batches import ReadOutcome
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.specs import HUB_PREFIX, TaskSpec, spec_columns
from meddiag_pipelines.text.models import class_probabilities, explain_texts, texts_of, train_text_models
from meddiag_pipelines.text.report import missing_texts, top_terms_html
from meddiag_pipelines.text.readers import read_text_batch
from meddiag_pipelines.device import torch_device
from meddiag_pipelines.validation.suites import CheckFailure
from meddiag_pipelines.text.validation import text_duplicates, unreadable_files, validate_texts

MODEL_NAMES = {"baseline": "tfidf_logistic_regression", "neural": "fasttext_torch", "encoder": "hf_encoder"}
FRAMEWORKS = {"baseline": "scikit-learn", "neural": "torch", "encoder": "transformers"}


def _text_predictor(plan: dict):
    def predict(model_dir, rows: pl.DataFrame) -> np.ndarray:
        return class_probabilities(Path(model_dir), texts_of(rows, plan["text_column"]), plan.get("binary", True))

    return predict


def _explain(model_dir, rows: pl.DataFrame, plan: dict) -> list[list[tuple[str, float]]]:
    """The words of each (scrubbed) text that pushed it toward its predicted class, by occlusion."""
    return explain_texts(Path(model_dir), texts_of(rows, plan["text_column"]))




def _card_extras(candidate: dict) -> list[tuple[str, str]]:
    return [("Top terms per class", top_terms_html(Path(candidate["dir"])))]


def _check_result(failures: list[CheckFailure], description: str | None = None, **metadata) -> dg.AssetCheckResult:
    result = common.failures_result(failures)
    return dg.AssetCheckResult(passed=result.passed, severity=result.severity, description=description,
                               metadata={**result.metadata, **metadata})  # fmt: skip


def build_text_assets(spec: TaskSpec) -> list:
    name = spec.name
    tags = common.asset_tags(spec)

    @dg.asset(key=[name, "raw_records"], description=f"{name}: new landed batches (CSV, Parquet, JSONL or .txt "
              "files + labels.csv), PHI scrubbed at read and only the scrubbed text appended to the warehouse; "
              "files that cannot be decoded as UTF-8 or read are quarantined one by one.",
              kinds={"duckdb", "polars"}, pool=common.pool(spec), **ingest.partitioned(spec), **tags)  # fmt: skip
    def raw_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> dg.MaterializeResult:
        truncated = 0

        def reader(batch: LandedBatch, spec: TaskSpec) -> ReadOutcome:
            nonlocal truncated
            result = read_text_batch(batch.path, spec)
            truncated += result.truncated
            return ReadOutcome(spec_columns(result.records, spec), list(result.rejected), files_read=list(result.files_read))

        result = ingest.ingest_partitions(context, spec, storage, reader)
        return dg.MaterializeResult(metadata={**(result.metadata or {}), "truncated_texts": truncated})

    @dg.asset_check(asset=raw_records, blocking=True, **ingest.check_partitions(spec), description="Every landed file the reader rejected (not "
                    "UTF-8, unreadable) is in quarantine with its reason and counted in the ledger; the good "
                    "files of its batch flow on.")  # fmt: skip
    def unreadable_files_quarantined(storage: MeddiagStorage) -> dg.AssetCheckResult:
        root = storage.root
        n_rejected, failures = unreadable_files(storage.warehouse.ledger(name), storage.layout.quarantine(name),
                                                lambda path: root.exists(root.relative(path)))  # fmt: skip
        return _check_result(failures, rejected_files=n_rejected)

    validated_records = ingest.build_validated_records_asset(
        spec, raw_records, tags, "rows of every batch that passed the text checks (GX suite: columns, unique ids, "
        "label domain; texts long enough and cleanly decoded).", lambda storage: validate_texts)

    @dg.asset_check(asset=validated_records, blocking=True, **ingest.check_partitions(spec), description="The text checks over all validated rows "
                    "(columns, label domain, unique ids across batches, texts not empty nor shorter than "
                    f"{spec.min_text_chars} characters, no decoding damage).")  # fmt: skip
    def validated_records_suite(storage: MeddiagStorage, validated_records: pl.DataFrame) -> dg.AssetCheckResult:
        if validated_records.is_empty():
            return ingest.no_validated_rows_result(spec, storage)
        return common.failures_result(validate_texts(validated_records, spec))

    split = build_split_asset(spec, validated_records, tags)

    @dg.asset_check(asset=split[0], blocking=True, description="Duplicated texts (Unicode, case and blanks folded) "
                    "and identical texts with conflicting labels are counted; it fails only if copies of one text "
                    "sit in more than one of train / val / test, which would leak training data into the test.")  # fmt: skip
    def texts_unique_across_splits(split: pl.DataFrame) -> dg.AssetCheckResult:
        duplicates = text_duplicates(split, spec)
        return _check_result(duplicates.failures(spec), duplicates.summary(), **duplicates.metadata())

    @dg.multi_asset(
        name=f"{name}__features",
        pool=common.pool(spec),
        outs=common.feature_outs(spec, tags, "the scrubbed text as is beside the keys and split (the models build "
                                 "their own n-gram features, fitted on training rows only).",
                                 "which column holds the text the models read."),
    )
    def features(context: dg.AssetExecutionContext, split: pl.DataFrame):
        frame = split.select(*key_columns_in(split, spec), pl.col(spec.text).cast(pl.String))
        plan = {"modality": "text", "text_column": spec.text, "min_text_chars": spec.min_text_chars,
                "scrubbed_at_read": True, "binary": spec.is_binary}  # fmt: skip
        lengths = frame[spec.text].str.len_chars()
        meta = {"n_rows": frame.height, "median_text_chars": float(lengths.median() or 0),
                "max_text_chars": int(lengths.max() or 0)}  # fmt: skip
        yield dg.Output(frame, output_name="features", metadata=meta)
        yield dg.Output(plan, output_name="feature_plan", metadata={"text_column": spec.text})

    @dg.asset(key=[name, "candidate_model"], description=f"{name}: trains the TF-IDF + logistic-regression "
              "baseline, a fastText-style torch model and, when the spec names a text_model, that pretrained "
              "Hugging Face encoder fine-tuned (optuna-tuned, CUDA when present) once, and keeps the best on "
              "validation macro-F1 (a tie goes to the simpler model); all saved in safe formats in the "
              "registry's staging area.", kinds={"pytorch", "scikitlearn"}, pool=common.pool(spec), **tags)  # fmt: skip
    def candidate_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, features: pl.DataFrame,
                        feature_plan: dict) -> dict:  # fmt: skip
        version = common.run_version(context)
        out = storage.registry.staging_dir(name, version) / "model"
        classes = labels.class_list(spec, features)
        train = features.filter(pl.col(SPLIT_COLUMN) == "train")
        val = features.filter(pl.col(SPLIT_COLUMN) == "val")
        column = feature_plan["text_column"]
        result = train_text_models(texts_of(train, column), labels.encode_labels(train[spec.label], classes),
                                   texts_of(val, column), labels.encode_labels(val[spec.label], classes),
                                   classes, spec, out, device=torch_device())  # fmt: skip
        chosen = json.loads((out / "chosen.json").read_text(encoding="utf-8"))
        params = {"chosen": result.chosen, **{f"val_macro_f1_{m}": f1 for m, f1 in result.val_scores.items()},
                  "baseline_C": chosen["baseline_C"], "temperature": chosen["temperature"][result.chosen],
                  "epochs": spec.training.epochs, "batch_size": spec.training.batch_size,
                  "learning_rate": spec.training.learning_rate, "patience": spec.training.patience,
                  "time_budget_s": spec.training.time_budget_s}  # fmt: skip
        if spec.text_model is not None:  # the encoder's settings; its search's best trial shows in the card
            shown = spec.text_model if spec.text_model.startswith(HUB_PREFIX) else Path(spec.text_model).name
            params.update({"text_model": shown, "text_encoder": spec.text_encoder.model_dump(),
                           "tuning": chosen["tuning"]["encoder"]})  # fmt: skip
        meta = {"name": MODEL_NAMES[result.chosen], "framework": FRAMEWORKS[result.chosen], "params": params,
                "val_score": result.val_scores[result.chosen], "classes": classes, "device": result.device}  # fmt: skip
        context.add_output_metadata({"train_seconds": round(result.seconds, 1), "chosen": result.chosen,
                                     "device": result.device})  # fmt: skip
        return common.model_handle(context, storage, spec, version, out, meta, feature_plan)

    @dg.asset(key=[name, "baseline_model"], description=f"{name}: the TF-IDF (word 1-2-grams, char 2-5-grams) + "
              "logistic-regression baseline every model is compared with; trained by candidate_model in the same "
              "call (never twice), this asset points at it.", kinds={"scikitlearn"}, pool=common.pool(spec),
              **tags)  # fmt: skip
    def baseline_model(context: dg.AssetExecutionContext, storage: MeddiagStorage, candidate_model: dict) -> dict:
        out = common.handle_dir(candidate_model, storage.root)
        chosen = json.loads((out / "chosen.json").read_text(encoding="utf-8"))
        meta = {"name": MODEL_NAMES["baseline"], "framework": FRAMEWORKS["baseline"],
                "params": {"C": chosen["baseline_C"], "temperature": chosen["temperature"]["baseline"]},
                "val_score": chosen["val_macro_f1"]["baseline"], "classes": candidate_model["classes"],
                "device": "cpu"}  # fmt: skip
        return common.model_handle(context, storage, spec, candidate_model["version"], out / "baseline", meta,
                                   candidate_model["plan"])  # fmt: skip

    downstream = lifecycle.build_model_lifecycle_assets(
        spec, tags, predictor_factory=_text_predictor, explain=_explain,
        missing_data=lambda train_rows, plan: missing_texts(train_rows, plan["text_column"]), card_extras=_card_extras,
    )  # fmt: skip
    return [raw_records, unreadable_files_quarantined, validated_records, validated_records_suite, *split,
            texts_unique_across_splits, features, candidate_model, baseline_model, *downstream]  # fmt: skip
