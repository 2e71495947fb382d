"""Property-based tests (hypothesis) for the tabular reader/normaliser, the split and the validators."""

import json
import string

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meddiag_pipelines.split import SPLIT_COLUMN, assign_split
from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import BATCH_COLUMN, describe_batch
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.layout import DataLayout
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import run_suite, tabular_expectations, validate_tabular
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, fast, land, synthetic_records
from meddiag_pipelines_tests.test_tabular_totality import train_and_score

SPEC = TaskSpec.model_validate(SYNTHETIC_SPEC)
cells = st.one_of(st.none(), st.text(max_size=12), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True))
names = st.sampled_from(["rid", "pid", "x1", "x2", "x3", "group", "outcome", "extra", "note"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=st.lists(names, min_size=1, max_size=7, unique=True), rows=st.lists(st.lists(cells, min_size=7, max_size=7), max_size=8),
       raw=st.binary(max_size=200), as_raw=st.booleans())  # fmt: skip
def test_any_csv_reads_or_is_rejected_never_crashes(tmp_path_factory, columns, rows, raw, as_raw):
    folder = tmp_path_factory.mktemp("batch")
    if as_raw:
        (folder / "records.csv").write_bytes(raw)
    else:
        data = {c: [None if r[i] is None else str(r[i]) for r in rows] for i, c in enumerate(columns)}
        pl.DataFrame(data, schema={c: pl.String for c in columns}).write_csv(folder / "records.csv")
    try:
        frame = read_tabular_batch(describe_batch(SPEC.name, folder), SPEC)
    except BatchRejected as exc:
        assert exc.file and exc.problem
        return
    for column in set(frame.columns) & {"x1", "x2", "x3"}:
        assert frame.schema[column] == pl.Float64 and not frame[column].is_nan().any()


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.text(alphabet=string.printable, min_size=1, max_size=20), min_size=1, max_size=30))
def test_split_is_a_pure_function_of_the_patient_key(keys):
    frame = pl.DataFrame({"rid": [f"r{i}" for i in range(len(keys))], "pid": keys, "outcome": ["yes"] * len(keys)})
    first = dict(zip(assign_split(frame, SPEC)["pid"], assign_split(frame, SPEC)[SPLIT_COLUMN]))
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=len(keys))
    again = assign_split(pl.concat([shuffled, frame.head(1).with_columns(pl.lit("r_extra").alias("rid"))]), SPEC)
    for pid, split in zip(again["pid"], again[SPLIT_COLUMN]):
        assert first[pid] == split  # order, batch mates and duplicates never move a patient


@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.text(alphabet=string.ascii_letters + string.digits, min_size=6, max_size=12), min_size=2, max_size=10))
def test_validation_never_echoes_identifier_values(ids):
    canaries = [f"ZQX{i}" for i in ids]
    frame = pl.DataFrame({"rid": canaries + canaries[:1], "pid": canaries + canaries[:1],
                          "x1": [1.0] * (len(ids) + 1), "x2": [None] * (len(ids) + 1), "x3": [0.5] * (len(ids) + 1),
                          "group": ["A"] * (len(ids) + 1), "outcome": ["maybe"] * (len(ids) + 1)})  # fmt: skip
    failures = validate_tabular(frame, SPEC, known_ids=set(canaries[1:]))
    assert failures
    text = json.dumps([f.as_dict() for f in failures])
    assert not any(c in text for c in canaries)


# -- the tabular path is total on validated data ------------------------------------------------------------------
TRICKY_NAMES = ["dose[mg]", "ratio<1", "X1", "GROUP", "_meddiag_split", "_Meddiag_x", " padded ", "Größe", "a,b", 'q"uote']
column_names = st.one_of(st.sampled_from(TRICKY_NAMES),
                         st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12))
value_kinds = st.sampled_from(["normal", "huge_ok", "huge_bad", "tiny", "mostly_nan", "lt_text", "names", "empty"])
batch_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
                      min_size=1, max_size=40).filter(lambda s: not s.startswith((".", "_")) and s.strip() == s)


def _values(kind: str, n: int, rng) -> pl.Series:
    normal = rng.normal(size=n)
    return {
        "normal": pl.Series(normal), "tiny": pl.Series(normal * 1e-310),
        "huge_ok": pl.Series(np.where(normal > 1, 3.0e38, normal)), "huge_bad": pl.Series(np.where(normal > 1, 1e39, normal)),
        "mostly_nan": pl.Series(np.where(normal > -0.5, np.nan, normal)),
        "lt_text": pl.Series(rng.choice(["<0.01", "0.5", ">10", "<LOD"], size=n)),
        "names": pl.Series([f"Zqx{i} Doe" for i in range(n)]), "empty": pl.Series([None] * n, dtype=pl.String),
    }[kind]  # fmt: skip


@pytest.mark.slow
# Each example is a full ingest, validation and training (~3 s): few examples, the same ones on every run.
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(extra=st.lists(st.tuples(column_names, value_kinds), max_size=4), batch=batch_names, parquet=st.booleans(),
       seed=st.integers(0, 1000))  # fmt: skip
def test_a_batch_is_quarantined_with_a_reason_or_trains_and_scores(tmp_path_factory, extra, batch, parquet, seed):
    """Random column names, values and batch names beside a good batch: each batch ends quarantined with a reason
    naming its file and problem (no value), or its rows go through validation, split, features, both models and
    scoring; the good batch always does."""
    spec = fast(SPEC, training=SPEC.training.model_copy(update={"trials": 2, "max_rounds": 20, "early_stopping_rounds": 5}))
    root = tmp_path_factory.mktemp("total")
    layout = DataLayout(root / "data")
    rng = np.random.default_rng(seed)
    hostile = synthetic_records(120, seed=seed, start=1000)
    for name, kind in extra:
        if name not in hostile.columns:
            hostile = hostile.with_columns(_values(kind, hostile.height, rng).alias(name))
    land(layout, SPEC.name, "good-batch", synthetic_records(160, seed=seed + 1))
    land(layout, SPEC.name, batch, hostile, filename="records.parquet" if parquet else "records.csv")
    warehouse = Warehouse(layout.warehouse_db())
    ingest = ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    records, validation = validate_pending_batches(spec, layout, warehouse, validate_tabular)
    for reason in [*ingest.quarantined, *validation.quarantined]:
        text = json.dumps(reason)
        assert reason["batch"] == batch and ("problem" in reason or reason["failures"])
        assert "Zqx" not in text and "1e+39" not in text and "3e+38" not in text
    event("quarantined" if ingest.quarantined or validation.quarantined else "trained with it")
    assert "good-batch" in set(records[BATCH_COLUMN])
    assert run_suite(records, tabular_expectations(spec, records.columns), spec.name) == []
    train_and_score(records, spec, root / "model")
