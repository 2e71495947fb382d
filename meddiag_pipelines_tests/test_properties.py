"""Property-based tests (hypothesis) for the tabular reader/normaliser, the split and the validators."""

import json
import string

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddiag_pipelines.features.split import SPLIT_COLUMN, assign_split
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import describe_batch
from meddiag_pipelines.ingestion.tabular import read_tabular_batch
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC

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
