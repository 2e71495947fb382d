"""Property-based tests (hypothesis) for the tabular reader/normaliser, the split and the validators."""

import json
import string

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import describe_batch
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, assign_split
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.validation.suites import run_suite, tabular_expectations, validate_tabular
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, fast, land, synthetic_records
from meddiag_pipelines_tests.test_tabular_totality import train_and_score

SPEC = TaskSpec.model_validate(SYNTHETIC_SPEC)
cells = st.one_of(
    st.none(), st.text(max_size=12), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True)
)
names = st.sampled_from(["rid", "pid", "x1", "x2", "x3", "group", "outcome", "extra", "note"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    columns=st.lists(names, min_size=1, max_size=7, unique=True),
    rows=st.lists(st.lists(cells, min_size=7, max_size=7), max_size=8),
    raw=st.binary(max_size=200),
    as_raw=st.booleans(),
)
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
    first = dict(zip(assign_split(frame, SPEC)["pid"], assign_split(frame, SPEC)[SPLIT_COLUMN], strict=False))
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=len(keys))
    again = assign_split(pl.concat([shuffled, frame.head(1).with_columns(pl.lit("r_extra").alias("rid"))]), SPEC)
    for pid, split in zip(again["pid"], again[SPLIT_COLUMN], strict=False):
        assert first[pid] == split  # order, batch mates and duplicates never move a patient


@settings(max_examples=15, deadline=None)
@given(
    ids=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits, min_size=6, max_size=12), min_size=2, max_size=10
    )
)
def test_validation_never_echoes_identifier_values(ids):
    canaries = [f"ZQX{i}" for i in ids]
    frame = pl.DataFrame(
        {
            "rid": canaries + canaries[:1],
            "pid": canaries + canaries[:1],
            "x1": [1.0] * (len(ids) + 1),
            "x2": [None] * (len(ids) + 1),
            "x3": [0.5] * (len(ids) + 1),
            "group": ["A"] * (len(ids) + 1),
            "outcome": ["maybe"] * (len(ids) + 1),
        }
    )
    failures = validate_tabular(frame, SPEC, known_ids=set(canaries[1:]))
    assert failures
    text = json.dumps([f.as_dict() for f in failures])
    assert not any(c in text for c in canaries)


# -- the tabular path is total on validated data ------------------------------------------------------------------
TRICKY_NAMES = [
    "dose[mg]",
    "ratio<1",
    "X1",
    "GROUP",
    "_meddiag_split",
    "_Meddiag_x",
    " padded ",
    "Größe",
    "a,b",
    'q"uote',
]
column_names = st.one_of(
    st.sampled_from(TRICKY_NAMES),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12),
)
value_kinds = st.sampled_from(["normal", "huge_ok", "huge_bad", "tiny", "mostly_nan", "lt_text", "names", "empty"])
batch_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/\\"), min_size=1, max_size=40
).filter(lambda s: not s.startswith((".", "_")) and s.strip() == s)


def _values(kind: str, n: int, rng) -> pl.Series:
    normal = rng.normal(size=n)
    return {
        "normal": pl.Series(normal),
        "tiny": pl.Series(normal * 1e-310),
        "huge_ok": pl.Series(np.where(normal > 1, 3.0e38, normal)),
        "huge_bad": pl.Series(np.where(normal > 1, 1e39, normal)),
        "mostly_nan": pl.Series(np.where(normal > -0.5, np.nan, normal)),
        "lt_text": pl.Series(rng.choice(["<0.01", "0.5", ">10", "<LOD"], size=n)),
        "names": pl.Series([f"Zqx{i} Doe" for i in range(n)]),
        "empty": pl.Series([None] * n, dtype=pl.String),
    }[kind]


@pytest.mark.slow
# Each example is a full ingest, validation and training (~3 s): few examples, the same ones on every run.
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=st.lists(st.tuples(column_names, value_kinds), max_size=4),
    batch=batch_names,
    parquet=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_a_batch_is_quarantined_with_a_reason_or_trains_and_scores(tmp_path_factory, extra, batch, parquet, seed):
    """Random column names, values and batch names beside a good batch: each batch ends quarantined with a reason
    naming its file and problem (no value), or its rows go through validation, split, features, both models and
    scoring; the good batch always does."""
    spec = fast(
        SPEC, training=SPEC.training.model_copy(update={"trials": 2, "max_rounds": 20, "early_stopping_rounds": 5})
    )
    root = tmp_path_factory.mktemp("total")
    layout = DataRoot(root / "data")
    rng = np.random.default_rng(seed)
    hostile = synthetic_records(120, seed=seed, start=1000)
    for name, kind in extra:
        if name not in hostile.columns:
            hostile = hostile.with_columns(_values(kind, hostile.height, rng).alias(name))
    land(layout, SPEC.name, "good-batch", synthetic_records(160, seed=seed + 1))
    land(layout, SPEC.name, batch, hostile, filename="records.parquet" if parquet else "records.csv")
    warehouse = Warehouse(layout)
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


# -- whatever passes validation flows through every later step, whatever Arrow type a column has (issue 24) --------
def _arrow_kinds() -> dict:
    """Arrow type -> a strategy for one of its values: every flat type Arrow and Polars write, and nested ones."""
    import datetime as dt
    import decimal

    import pyarrow as pa

    utc = st.just(dt.UTC)
    instants = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1))
    small = st.integers(-(2**31), 2**31 - 1)
    return {
        pa.int8(): st.integers(-128, 127),
        pa.int64(): st.integers(-(2**63), 2**63 - 1),
        pa.uint8(): st.integers(0, 255),
        pa.uint64(): st.integers(0, 2**64 - 1),
        pa.float16(): st.floats(width=16).map(np.float16),
        pa.float32(): st.floats(width=32),
        pa.float64(): st.floats(),
        pa.decimal128(12, 3): st.decimals(-(10**8), 10**8, places=3).map(decimal.Decimal),
        pa.bool_(): st.booleans(),
        pa.string(): st.text(max_size=8),
        pa.large_string(): st.text(max_size=8),
        pa.binary(): st.one_of(st.binary(max_size=6), st.text(max_size=6).map(str.encode)),
        pa.large_binary(): st.binary(max_size=6),
        pa.binary(3): st.binary(min_size=3, max_size=3),
        pa.date32(): st.dates(),
        pa.date64(): st.dates(),
        pa.time32("s"): st.times().map(lambda t: t.replace(microsecond=0)),
        pa.time64("ns"): st.times(),
        pa.timestamp("s"): instants,
        pa.timestamp("ns", tz="UTC"): instants.map(lambda d: d.replace(tzinfo=dt.UTC)),
        pa.timestamp("ms", tz="America/New_York"): st.datetimes(
            dt.datetime(1970, 1, 2), dt.datetime(2100, 1, 1), timezones=utc
        ),
        pa.duration("s"): st.timedeltas(dt.timedelta(days=-(10**5)), dt.timedelta(days=10**5)),
        pa.duration("ns"): st.timedeltas(dt.timedelta(days=-(10**4)), dt.timedelta(days=10**4)),
        pa.null(): st.none(),
        pa.dictionary(pa.int8(), pa.string()): st.sampled_from(["a", "b", "Mary Smith"]),
        pa.list_(pa.int32()): st.lists(small, max_size=3),
        pa.struct([("a", pa.int32())]): st.fixed_dictionaries({"a": small}),
    }


ARROW_KINDS = _arrow_kinds()
TYPED_ROWS = 120  # per batch: enough for every split to hold both classes of the synthetic outcome


@st.composite
def typed_columns(draw) -> dict:
    """Column name -> (Arrow type, values): a few distinct values (nulls among them) repeated over the rows, so
    categorical levels, medians and copies all occur; names may replace a key, the label or a declared column."""
    out = {}
    for name in draw(
        st.lists(st.sampled_from(["extra", "Extra2", "group", "x1", "outcome", "pid"]), max_size=3, unique=True)
    ):
        kind = draw(st.sampled_from(list(ARROW_KINDS)))
        pool = draw(st.lists(st.one_of(st.none(), ARROW_KINDS[kind]), min_size=1, max_size=6))
        out[name] = (kind, [pool[i % len(pool)] for i in range(TYPED_ROWS)])
    return out


def _land_typed(layout: DataRoot, batch: str, start: int, columns: dict) -> bool:
    """A Parquet batch of synthetic records with ``columns`` set; False if Arrow cannot build one of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = synthetic_records(TYPED_ROWS, seed=7, start=start).to_arrow()
    for name, (kind, values) in columns.items():
        try:
            array = pa.array(values, type=kind)
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            return False
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, array) if index >= 0 else table.append_column(name, array)
    folder = layout.landing(SPEC.name) / batch
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "records.parquet")
    (folder / "_READY").touch()
    return True


def _fit_and_score(features: pl.DataFrame, plan, spec: TaskSpec, split: pl.DataFrame) -> None:
    """The cheapest model path: two boosting rounds on the training rows under the plan's model names, then
    scoring rows transformed by the plan read back from JSON (as the registry stores it)."""
    import xgboost as xgb

    from meddiag_pipelines.flat.features import FeaturePlan, transform
    from meddiag_pipelines.tabular.modality import feature_matrix

    train = features.filter(pl.col(SPLIT_COLUMN) == "train")
    X, _ = feature_matrix(train)
    assert np.isfinite(X).all()
    y = (train[spec.label] == spec.positive).cast(pl.Int8).to_numpy()
    booster = xgb.train({"tree_method": "hist", "max_depth": 2}, xgb.DMatrix(X, y, feature_names=plan.model_names), 2)
    again = FeaturePlan.from_dict(json.loads(json.dumps(plan.as_dict(), sort_keys=True)))
    rows = transform(split.head(9), again).select(booster.feature_names).to_numpy()
    proba = booster.predict(xgb.DMatrix(rows, feature_names=booster.feature_names))
    assert proba.shape == (rows.shape[0],) and np.isfinite(proba).all()


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=typed_columns(), second=typed_columns())
def test_whatever_arrow_type_passes_validation_flows_through_split_features_and_a_model(
    tmp_path_factory, first, second
):
    """Two Parquet batches whose columns take random Arrow types, values and nulls (a key, the label or a
    declared column among them): each is quarantined with a reason, or its rows go through reading, the
    warehouse, validation, split, features, a model fit and scoring; no step after validation raises."""
    from meddiag_pipelines.split import check_split, split_by_content
    from meddiag_pipelines.tabular.modality import feature_table

    spec = SPEC.model_copy(update={"null_values": {"extra": ["?"], "group": ["NA"]}})
    layout = DataRoot(tmp_path_factory.mktemp("typed") / "data")
    assume(_land_typed(layout, "a", 0, first) and _land_typed(layout, "b", 1000, second))
    warehouse = Warehouse(layout)
    ingest = ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    records, validation = validate_pending_batches(spec, layout, warehouse, validate_tabular)
    for reason in ingest.quarantined:
        assert reason["file"] in ("records.parquet", reason["batch"]) and reason["problem"]
    event(f"{2 - len(ingest.quarantined) - len(validation.quarantined)} batches validated")
    if records.is_empty():
        return
    split, _ = split_by_content(records, spec)
    check_split(split, spec)
    features, plan = feature_table(split, spec)
    assert features.height == split.height
    _fit_and_score(features, plan, spec, split)
