"""``python -m bench <name> [--size ...]``: run one benchmark (or ``all``), one JSON line per measurement."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "ingest": "bench.ingest",  # Warehouse.append of a batch when N rows are already there
    "orchestration": "bench.orchestration",  # Dagster vs direct calls; multiprocess executor per-step cost
    "training": "bench.training",  # XGBoost, CNN, text model throughput
    "sensor": "bench.sensor",  # landing sensor latency with 10,000 batches in landing
    "deid": "bench.deid",  # de-identification recall per PHI class, false positives on ICD-10-CM text
    "validation": "bench.validation",  # the tabular GX suite on one batch: plain Polars, GX on pandas, GX via Polars
    "partitions": "bench.partitions",  # 1,000 batches as partitions: sensor tick, run planning, split over all
    "distributed": "bench.distributed",  # tabular XGBoost on a local Dask cluster: 1 vs 2 workers vs single-node
    "text_encoder": "bench.text_encoder",  # MiniLM fine-tuned vs the tuned TF-IDF baseline on ICD-10-CM, CPU
    "pneumonia_like": "bench.pneumonia_like",  # the from-scratch CNN on PneumoniaMNIST-like data, shifted test split
    "model_choice": "bench.model_choice",  # XGBoost vs the logistic baseline chosen on a first Framingham batch
    "omop_plp": "bench.omop_plp",  # the Book of OHDSI's NSAID -> GI bleed exercise on Eunomia over split seeds
    "omop": "bench.omop",  # OMOP CDM cohort + MEDS + covariates (DuckDB) vs the same three steps in pandas
    "monitoring": "bench.monitoring",  # drift, estimate: cost per 10k rows; false alarms vs detections across sites
    "main_job": "bench.main_job",  # the README main job (meddiag update, every bundled task): total, by task and step
    "volume": "bench.volume",  # the 3D ResNet on a MedMNIST-3D-layout npz: CPU voxels/s, test AUROC
    "volume_memory": "bench.volume_memory",  # the volume task step by step: peak RSS of each
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHMARKS, "all"):
        print(
            __doc__ + "\n\nbenchmarks: " + ", ".join(BENCHMARKS) + ", all (each with --size smoke|...)", file=sys.stderr
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    names = list(BENCHMARKS) if argv[0] == "all" else [argv[0]]
    for name in names:
        importlib.import_module(BENCHMARKS[name]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
