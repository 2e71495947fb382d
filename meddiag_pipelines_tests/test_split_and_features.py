import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.flat.features import OTHER, fit_plan, missing_data_table, transform
from meddiag_pipelines.split import SPLIT_COLUMN, SplitError, assign_split, check_split
from meddiag_pipelines_tests.conftest import synthetic_records


def test_split_is_stable_when_a_batch_is_added(synthetic_spec):
    first = synthetic_records(400, seed=1)
    both = pl.concat([first, synthetic_records(400, seed=2, start=400)])
    before = assign_split(first, synthetic_spec).select("rid", SPLIT_COLUMN)
    after = assign_split(both, synthetic_spec).select("rid", SPLIT_COLUMN)
    joined = before.join(after, on="rid", suffix="_after")
    assert joined.height == first.height
    assert (joined[SPLIT_COLUMN] == joined[f"{SPLIT_COLUMN}_after"]).all()


def test_patients_never_straddle_splits_and_unlabelled_rows_are_scored(synthetic_spec):
    frame = synthetic_records(600, seed=3).with_columns(
        pl.when(pl.col("rid").is_in(["r0", "r5"])).then(None).otherwise(pl.col("outcome")).alias("outcome")
    )
    split = assign_split(frame, synthetic_spec)
    labelled = split.filter(pl.col(SPLIT_COLUMN) != "score")
    assert labelled.group_by("pid").agg(pl.col(SPLIT_COLUMN).n_unique())[SPLIT_COLUMN].max() == 1
    assert set(split.filter(pl.col(SPLIT_COLUMN) == "score")["rid"]) == {"r0", "r5"}
    fractions = labelled[SPLIT_COLUMN].value_counts(normalize=True)
    train = fractions.filter(pl.col(SPLIT_COLUMN) == "train")["proportion"][0]
    assert 0.5 < train < 0.7
    table = check_split(split, synthetic_spec)
    assert all(set(table[s]) == {"no", "yes"} for s in ("train", "val", "test"))


def test_split_without_a_class_fails_clearly(synthetic_spec):
    frame = synthetic_records(200, seed=4).with_columns(pl.lit("no").alias("outcome"))
    frame = pl.concat([frame, synthetic_records(1, seed=5, start=999).with_columns(pl.lit("yes").alias("outcome"))])
    with pytest.raises(SplitError, match="has no rows of class"):
        check_split(assign_split(frame, synthetic_spec), synthetic_spec)


def _own_split(labels: dict[str, list[str]]) -> pl.DataFrame:
    """Rows keeping the data's own split (as an npz's train_ / val_ / test_ arrays give it): ``labels`` per split."""
    rows = [(split, label) for split, values in labels.items() for label in values]
    return pl.DataFrame(
        {
            "rid": [f"r{i}" for i in range(len(rows))],
            "outcome": [label for _, label in rows],
            "predefined_split": [split for split, _ in rows],
            SPLIT_COLUMN: [split for split, _ in rows],
        }
    )


def test_a_split_the_data_brings_is_not_fixed_by_split_fractions(synthetic_spec):
    no_yes_in_test = _own_split({"train": ["no", "yes"], "val": ["no", "yes"], "test": ["no", "no"]})
    with pytest.raises(SplitError, match=r"the test split has no rows of class \['yes'\]; add data or change split"):
        check_split(no_yes_in_test, synthetic_spec)  # a hash split: the fractions are the advice
    own = (
        r"task synthetic_risk: the data's own test split \(column 'predefined_split', which every labelled row keeps\) "
        r"has no rows of class \['yes'\]; add such rows to the data's test split \(an npz's test_images / "
        r"test_labels\): the spec's split fractions do not apply to a split the data brings$"
    )
    with pytest.raises(SplitError, match=own):
        check_split(no_yes_in_test, synthetic_spec, "predefined_split")
    no_val = _own_split({"train": ["no", "yes"], "test": ["no", "yes"]})
    with pytest.raises(SplitError, match=r"the data's own val split \(.*\) has no labelled rows; .* npz's val_images"):
        check_split(no_val, synthetic_spec, "predefined_split")
    # a folder batch beside the npz: some rows take the hash split, which the fractions do change
    mixed = no_yes_in_test.with_columns(
        pl.when(pl.col("rid") == "r0").then(None).otherwise(pl.col("predefined_split")).alias("predefined_split")
    )
    with pytest.raises(
        SplitError, match=r"has no rows of class \['yes'\]; 5 of the 6 labelled rows keep the data's own"
    ):
        check_split(mixed, synthetic_spec, "predefined_split")
    complete = _own_split({"train": ["no", "yes"], "val": ["no", "yes"], "test": ["no", "yes"]})
    assert check_split(complete, synthetic_spec, "predefined_split")["test"] == {"no": 1, "yes": 1}


def test_features_are_fitted_on_training_rows_only(synthetic_spec):
    train = pl.DataFrame(
        {
            "rid": ["a", "b", "c", "d", "e", "f"],
            "x1": [1.0, 2.0, 3.0, None, 5.0, 100.0],
            "x2": [0.0] * 6,
            "x3": [1.0] * 6,
            "group": ["A"] * 5 + ["B"],
            "outcome": ["no", "yes"] * 3,
        }
    )
    plan = fit_plan(train.head(5), synthetic_spec)
    assert plan.medians["x1"] == pytest.approx(2.5)  # the 100.0 of the held-back row does not leak in
    assert plan.indicators == ["x1"]
    assert plan.categorical["group"] == ["A", OTHER]  # B is unseen in training, A is frequent enough
    out = transform(train, plan)
    assert out.columns == plan.feature_names
    assert out["x1"].to_list()[3] == pytest.approx(2.5) and out["x1__missing"].to_list()[3] == 1.0
    assert out[f"group={OTHER}"].to_list()[-1] == 1.0
    assert out.dtypes == [pl.Float32] * out.width
    table = {r["feature"]: r for r in missing_data_table(train.head(5), plan)}
    assert table["x1"]["n_missing"] == 1 and "indicator" in table["x1"]["handling"]


def test_null_codes_and_types_survive_the_plan(heart_spec):
    frame = pl.DataFrame(
        {
            "record_id": ["1", "2"],
            "Age": [50, 60],
            "Cholesterol": [None, 200],
            "RestingBP": [120, 130],
            "MaxHR": [150, 140],
            "Oldpeak": [0.5, np.nan],
            "HeartDisease": ["0", "1"],
        }
    )
    for c in ("Sex", "ChestPainType", "FastingBS", "RestingECG", "ExerciseAngina", "ST_Slope"):
        frame = frame.with_columns(pl.lit("x").alias(c))
    plan = fit_plan(frame, heart_spec)
    out = transform(frame, plan)
    assert not out.select(pl.all().is_nan().any()).row(0)[0] and out.null_count().sum_horizontal()[0] == 0


# -- copies cannot leak: identical content shares a split with its patients ---------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from meddiag_pipelines.specs import TaskSpec  # noqa: E402
from meddiag_pipelines.split import CONTENT_COLUMN, content_keys, duplicate_contents  # noqa: E402

_rows = st.lists(
    st.tuples(st.integers(0, 15), st.integers(0, 15), st.sampled_from(["no", "yes", None])), min_size=1, max_size=60
)


def _frame(rows: list[tuple], prefix: str) -> pl.DataFrame:
    """Records of a few patients and contents (many shared), ids unique."""
    return pl.DataFrame(
        {
            "rid": [f"{prefix}{i}" for i in range(len(rows))],
            "pid": [f"{prefix}p{p}" for p, _, _ in rows],
            CONTENT_COLUMN: [f"{prefix}c{c}" for _, c, _ in rows],
            "outcome": [y for _, _, y in rows],
        },
        schema_overrides={"outcome": pl.String},
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # spec is read-only
@given(first=_rows, added=_rows)
def test_no_content_and_no_patient_in_two_splits_and_added_batches_move_nothing(synthetic_spec, first, added):
    before = assign_split(_frame(first, "a"), synthetic_spec, content_key=CONTENT_COLUMN)
    labelled = before.filter(pl.col(SPLIT_COLUMN) != "score")
    for key in ("pid", CONTENT_COLUMN):
        assert labelled.group_by(key).agg(pl.col(SPLIT_COLUMN).n_unique())[SPLIT_COLUMN].max() in (None, 1)
    assert (
        before.filter(pl.col("outcome").is_null())[SPLIT_COLUMN].to_list() == ["score"] * before["outcome"].null_count()
    )
    both = assign_split(pl.concat([_frame(first, "a"), _frame(added, "b")]), synthetic_spec, content_key=CONTENT_COLUMN)
    assert both.head(before.height)[SPLIT_COLUMN].to_list() == before[SPLIT_COLUMN].to_list()


def test_a_patient_without_copies_keeps_the_split_of_its_own_key(synthetic_spec):
    frame = synthetic_records(400, seed=6)
    plain = assign_split(frame, synthetic_spec)
    grouped = assign_split(
        frame.with_columns(content_keys(frame, synthetic_spec).alias(CONTENT_COLUMN)),
        synthetic_spec,
        content_key=CONTENT_COLUMN,
    )
    assert grouped[SPLIT_COLUMN].to_list() == plain[SPLIT_COLUMN].to_list()


def test_identical_feature_rows_share_a_split_and_conflicting_labels_are_counted(synthetic_spec):
    frame = synthetic_records(300, seed=7)
    copies = frame.head(40).with_columns(
        ("copy" + pl.col("rid")).alias("rid"),
        ("other" + pl.col("pid")).alias("pid"),
        pl.when(pl.col("outcome") == "yes").then(pl.lit("no")).otherwise(pl.lit("yes")).alias("outcome"),
    )
    frame = pl.concat([frame, copies])
    keys = content_keys(frame, synthetic_spec)
    split = assign_split(frame.with_columns(keys.alias(CONTENT_COLUMN)), synthetic_spec, content_key=CONTENT_COLUMN)
    originals = split.head(40)[SPLIT_COLUMN].to_list()
    assert split.tail(40)[SPLIT_COLUMN].to_list() == originals
    assert len(set(originals)) > 1  # copies moved with their originals, not all into one split
    counts = duplicate_contents(split, synthetic_spec, CONTENT_COLUMN)
    assert counts == {
        "duplicate_contents": 40,
        "duplicate_rows": 80,
        "conflicting_label_contents": 40,
        "conflicting_label_rows": 80,
        "contents_across_splits": 0,
    }


def test_texts_differing_in_case_and_blanks_are_one_content():
    spec = TaskSpec(name="notes", modality="text", text="note", label="y", id="nid")
    frame = pl.DataFrame({"note": ["Chest  PAIN\n at rest ", "chest pain at rest", "chest pains", "  ", None]})
    keys = content_keys(frame, spec).to_list()
    assert keys[0] == keys[1] and keys[2] != keys[0] and keys[3:] == [None, None]  # blank texts link nothing


def test_a_predefined_split_is_kept_and_copies_outside_it_follow_it(synthetic_spec):
    frame = pl.DataFrame(
        {
            "rid": ["n0", "n1", "n2", "f0"],
            "pid": ["n0", "n1", "n2", "f0"],
            CONTENT_COLUMN: ["x", "x", "y", "y"],
            "outcome": ["no", "yes", "no", "yes"],
            "predefined_split": ["train", "test", "val", None],
        }
    )
    split = assign_split(frame, synthetic_spec, content_key=CONTENT_COLUMN, predefined="predefined_split")
    assert split[SPLIT_COLUMN].to_list() == ["train", "test", "val", "val"]


def test_the_split_asset_groups_copied_rows_and_reports_conflicting_labels(synthetic_spec, tmp_path):
    import dagster as dg

    from meddiag_pipelines.defs.assets.common import asset_tags
    from meddiag_pipelines.defs.assets.split import build_split_asset

    frame = synthetic_records(300, seed=8)
    copies = frame.head(30).with_columns(
        ("copy" + pl.col("rid")).alias("rid"),
        ("other" + pl.col("pid")).alias("pid"),
        pl.when(pl.col("rid").is_in(["r0", "r1"]))
        .then(pl.when(pl.col("outcome") == "yes").then(pl.lit("no")).otherwise(pl.lit("yes")))
        .otherwise(pl.col("outcome"))
        .alias("outcome"),
    )
    [split] = build_split_asset(synthetic_spec, None, asset_tags(synthetic_spec))
    storage = MeddiagStorage(data_dir=str(tmp_path))
    [out] = split(dg.build_asset_context(), storage=storage, validated_records=pl.concat([frame, copies]))
    assert CONTENT_COLUMN not in out.value.columns
    assert out.value.tail(30)[SPLIT_COLUMN].to_list() == out.value.head(30)[SPLIT_COLUMN].to_list()
    meta = {k: v.value if hasattr(v, "value") else v for k, v in out.metadata.items()}
    assert (meta["duplicate_contents"], meta["conflicting_label_contents"], meta["contents_across_splits"]) == (
        30,
        2,
        0,
    )


def test_records_without_a_patient_id_are_not_one_patient(synthetic_spec):
    frame = synthetic_records(300, seed=9).with_columns(pl.lit(None, pl.String).alias("pid"))
    split = assign_split(frame, synthetic_spec)
    assert split[SPLIT_COLUMN].n_unique() == 3


def test_key_columns_are_the_spec_keys_and_internal_marks_a_frame_has_in_its_order(synthetic_spec):
    from meddiag_pipelines.specs import BATCH_COLUMN
    from meddiag_pipelines.split import COPY_OF_TRAIN_COLUMN, key_columns_in

    frame = pl.DataFrame(
        {c: [1] for c in [SPLIT_COLUMN, "x1", "group", "outcome", COPY_OF_TRAIN_COLUMN, "rid", BATCH_COLUMN, "x2"]}
    )
    assert key_columns_in(frame, synthetic_spec) == [
        SPLIT_COLUMN,
        "group",
        "outcome",
        COPY_OF_TRAIN_COLUMN,
        "rid",
        BATCH_COLUMN,
    ]
    assert key_columns_in(frame.drop("rid"), synthetic_spec.model_copy(update={"patient_id": None}))[-1] == BATCH_COLUMN


def test_the_split_asset_without_validated_rows_says_so_and_materializes_nothing(synthetic_spec, capfd, tmp_path):
    """Issue 24: a task whose only batch is quarantined has no validated rows (a frame without columns); the split
    says so plainly and yields nothing, so the later steps are skipped rather than failing on a missing column."""
    import dagster as dg

    from meddiag_pipelines.defs.assets.common import asset_tags
    from meddiag_pipelines.defs.assets.split import build_split_asset

    [split] = build_split_asset(synthetic_spec, None, asset_tags(synthetic_spec))
    storage = MeddiagStorage(data_dir=str(tmp_path))
    assert list(split(dg.build_asset_context(), storage=storage, validated_records=pl.DataFrame())) == []
    warnings = [line for line in capfd.readouterr().err.splitlines() if " - WARNING - " in line]
    assert any("no validated rows yet" in w for w in warnings), warnings
