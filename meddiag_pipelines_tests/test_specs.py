from pathlib import Path

import pytest

from meddiag_pipelines.specs import RESERVED_TASK_NAMES, SpecError, TaskSpec, load_spec, scan_specs, spec_dirs


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


GOOD = "name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: '1'\nclasses: ['0', '1']\n"


def test_bundled_specs_load():
    scan = scan_specs()
    names = {s.name for s in scan.specs}
    assert scan.errors == []
    assert {"heart_disease", "breast_cancer"} <= names


def test_tasks_dir_adds_specs_without_code(tmp_path, monkeypatch):
    write(tmp_path, "extra.yaml", GOOD)
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    assert tmp_path in spec_dirs()
    assert "extra_task" in {s.name for s in scan_specs().specs}


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("modality: tabular\nlabel: y\nid: rid\n", "name", "Field required"),
        ("name: t\nmodality: audio\nlabel: y\nid: rid\n", "modality", "Input should be"),
        ("name: Bad-Name\nmodality: tabular\nlabel: y\nid: rid\n", "name", "lower-case"),
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\npositive: z\nclasses: [a, b]\n",
            "(top level)",
            "positive class",
        ),
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\nsplit: {train: 0.9, val: 0.2, test: 0.2}\n",
            "split",
            "sum to 1",
        ),
        ("name: t\nmodality: text\nlabel: y\nid: rid\n", "(top level)", "'text' key"),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\nunknown_key: 1\n", "unknown_key", "Extra inputs"),
        # Issue 24: values Dagster refuses when it builds the task (or, the time zone, at the first tick).
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\nschedule: {cron: every day at noon}\n",
            "schedule.cron",
            "five fields",
        ),
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\nschedule: {cron: '0 0 12 * * *'}\n",
            "schedule.cron",
            "five fields",
        ),
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\nschedule: {cron: '0 2 30 2 *'}\n",
            "schedule.cron",
            "times that exist",
        ),
        (
            "name: t\nmodality: tabular\nlabel: y\nid: rid\nschedule: {timezone: Mars/Olympus}\n",
            "schedule.timezone",
            "time zone",
        ),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\nowner: not an owner\n", "owner", "email address or 'team:"),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\nowner: 'team:'\n", "owner", "email address or 'team:"),
        # Issue 24: the label as an id, a feature or an excluded column.
        ("name: t\nmodality: tabular\nlabel: y\nid: y\n", "(top level)", "the label column 'y' is also named by id"),
        ("name: t\nmodality: tabular\nlabel: y\npatient_id: y\n", "(top level)", "also named by patient_id"),
        ("name: t\nmodality: text\nlabel: y\ntext: y\n", "(top level)", "also named by text"),
        ("name: t\nmodality: tabular\nlabel: y\nnumeric: [a, y]\n", "(top level)", "also named by numeric"),
        ("name: t\nmodality: tabular\nlabel: y\ncategorical: [y]\n", "(top level)", "also named by categorical"),
        ("name: t\nmodality: tabular\nlabel: y\nexclude: [y]\n", "(top level)", "also named by exclude"),
    ],
)
def test_bad_spec_names_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"key '{key}'" in message and problem in message


def test_unreadable_yaml_names_file(tmp_path):
    path = write(tmp_path, "broken.yaml", "name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: cannot read YAML"):
        load_spec(path)


def test_good_schedules_and_owners_load(tmp_path):
    spec = load_spec(
        write(
            tmp_path, "ok.yaml", GOOD + "owner: ward@example.org\nschedule: {cron: '@daily', timezone: Europe/Paris}\n"
        )
    )
    assert (spec.owner, spec.schedule.cron, spec.schedule.timezone) == ("ward@example.org", "@daily", "Europe/Paris")


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("name: t\nlabel: [PHICANARY unclosed\n", "at line 3, column 1"),
        ("name: t\nlabel: y\n  PHICANARY: : x\n", "at line 3, column 12"),
        ("name: t\ndescription: 'PHICANARY\n", "at line 3, column 1"),
        ("name: t\nPHICANARY: 1\nPHICANARY: 2\n", "at line 3, column 1"),
    ],
)
def test_yaml_errors_name_the_place_without_quoting_the_line(tmp_path, text, place):
    """PyYAML's messages quote the offending line (issue 24): the error names the file, line and column only."""
    path = write(tmp_path, "quoted.yaml", text)
    with pytest.raises(SpecError, match="cannot read YAML") as err:
        load_spec(path)
    message = str(err.value).replace("key 'PHICANARY' is given twice", "")  # the duplicate key's own name
    assert place in message and "PHICANARY" not in message, message


def test_duplicate_task_names_are_refused(tmp_path):
    write(tmp_path / "a", "one.yaml", GOOD)
    write(tmp_path / "b", "two.yaml", GOOD)
    scan = scan_specs([tmp_path / "a", tmp_path / "b"])
    assert [s.name for s in scan.specs] == ["extra_task"]
    assert [(e.path.name, "already defined in" in e.problem) for e in scan.errors] == [("two.yaml", True)]


def test_the_docs_spec_examples_are_valid_specs():
    import re

    import yaml

    from meddiag_pipelines.specs import TaskSpec
    from meddiag_pipelines_tests.conftest import REPO

    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "adding-a-task.md").read_text(), re.S)
    names = [TaskSpec.model_validate(doc).name for block in blocks for doc in yaml.safe_load_all(block)]
    assert names == ["sepsis_risk", "pneumonia_xray", "discharge_specialty"]


BASE = "name: t\nmodality: tabular\nlabel: y\nid: rid\n"


@pytest.mark.parametrize(
    ("extra", "positive", "classes"),
    [
        ("positive: 1\nclasses: [0, 1]\n", "1", ["0", "1"]),
        ("positive: 1.0\nclasses: [0.0, 1.0]\n", "1", ["0", "1"]),
        ("positive: true\nclasses: [false, true]\n", "1", ["0", "1"]),
        ("positive: '1'\nclasses: ['0', '1']\n", "1", ["0", "1"]),
        ("positive: yes_\nclasses: [no_, yes_]\n", "yes_", ["no_", "yes_"]),
        ("positive: '01'\nclasses: ['00', '01']\n", "01", ["00", "01"]),
        ("positive: 1\n", "1", None),
        ("positive: yes\nclasses: [no, yes]\n", "yes", ["no", "yes"]),  # YAML 1.1 would make them booleans
        ("positive: On\nclasses: [Off, On]\n", "On", ["Off", "On"]),
        ("classes: [0, 1, 2.5]\n", None, ["0", "1", "2.5"]),
    ],
)
def test_label_values_as_users_write_them_are_canonical_text(tmp_path, extra, positive, classes):
    spec = load_spec(write(tmp_path, "t.yaml", BASE + extra))
    assert spec.positive == positive and spec.classes == classes


def test_boolean_keys_still_read_yes_no_as_booleans(tmp_path):
    spec = load_spec(write(tmp_path, "t.yaml", BASE + "schedule: {enabled: no}\nlanding: {ready: quiet}\n"))
    assert spec.schedule.enabled is False
    assert load_spec(write(tmp_path, "u.yaml", BASE + "schedule: {enabled: yes}\n")).schedule.enabled is True


def test_positive_given_as_a_number_must_still_be_among_classes(tmp_path):
    with pytest.raises(SpecError, match="positive class '2' is not among classes"):
        load_spec(write(tmp_path, "t.yaml", BASE + "positive: 2\nclasses: [0, 1]\n"))


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("positive: ''\n", "positive", "must not be empty"),
        ("positive: .nan\n", "positive", "finite"),
        ("classes: [0, [1]]\n", "classes.1", "valid string"),
        ("ranges: {age: [.nan, 120]}\n", "ranges.age.0", "finite"),
        ("ranges: {age: [0, .inf]}\n", "ranges.age.1", "finite"),
        ("ranges: {age: [120, 0]}\n", "ranges", "lower bound 120.0 is above the upper bound 0.0"),
        ("split: {train: .nan, val: 0.2, test: 0.2}\n", "split.train", "finite"),
        ("promotion: {margin: .inf}\n", "promotion.margin", "finite"),
        ("promotion: {slope_band: [1.25, 0.8]}\n", "promotion", "slope_band: the lower bound"),
        ("promotion: {auroc_floor: .nan}\n", "promotion.auroc_floor", "finite"),
        ("evaluation: {operating_threshold: .nan}\n", "evaluation.operating_threshold", "finite"),
        ("max_null_rate: .nan\n", "max_null_rate", "finite"),
        ("training: {timeout_s: .inf}\n", "training.timeout_s", "finite"),
        ("null_values: {age: [.nan]}\n", "null_values.age.0", "finite"),
    ],
)
def test_non_finite_values_and_inverted_ranges_are_refused(tmp_path, extra, key, problem):
    path = write(tmp_path, "bad.yaml", BASE + extra)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"key '{key}" in message and problem in message, message  # a union adds '.float'


@pytest.mark.parametrize("name", sorted(RESERVED_TASK_NAMES))
def test_reserved_task_names_are_refused(tmp_path, name):
    with pytest.raises(SpecError, match=f"key 'name':.*'{name}' is reserved"):
        load_spec(write(tmp_path, "bad.yaml", BASE.replace("name: t", f"name: {name}")))


def test_reserved_names_are_what_duckdb_cannot_hold_as_a_task_schema(tmp_path):
    """Each reserved name fails (or is shared with DuckDB's own objects) in a warehouse like ours."""
    import duckdb

    con = duckdb.connect(str(tmp_path / "meddiag.duckdb"))
    builtin = {r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    builtin |= {r[0] for r in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    assert builtin <= RESERVED_TASK_NAMES
    for name in ("information_schema", "temp", "system", "meddiag"):
        with pytest.raises(duckdb.BinderException, match=f'system catalog|reference to catalog or schema "{name}"'):
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
            con.execute(f'CREATE TABLE "{name}".raw_records AS SELECT 1 AS x')


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (BASE + "label: z\n", "label", 5),
        (BASE + "promotion:\n  margin: 0.01\n  margin: 0.5\n", "margin", 7),
        (BASE + "ranges: {age: [0, 1], age: [0, 2]}\n", "age", 5),
    ],
)
def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path, text, key, line):
    path = write(tmp_path, "dup.yaml", text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"key '{key}' is given twice" in message and f"line {line}," in message, message


def test_yaml_merge_keys_keep_safe_load_semantics():
    import yaml

    from meddiag_pipelines.specs import _safe_yaml

    doc = "a: &x {k: 1, j: 2}\nb: {<<: *x, k: 3}\nc: [1, 1]\n"
    assert _safe_yaml(doc) == yaml.safe_load(doc) == {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}, "c": [1, 1]}
    with pytest.raises(
        yaml.constructor.ConstructorError, match="could not determine a constructor for the tag .*python/object/apply"
    ):
        _safe_yaml("!!python/object/apply:os.system [echo unsafe]\n")


def test_spec_that_is_not_a_regular_file_is_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(SpecError, match="fifo.yaml: not a regular file"):
        load_spec(tmp_path / "fifo.yaml")


def test_unhashable_yaml_key_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read YAML"):
        load_spec(write(tmp_path, "t.yaml", BASE + "? [a, b]\n: 1\n"))


def test_scan_keeps_good_specs_beside_bad_ones(tmp_path):
    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR

    write(tmp_path / "extra", "good.yaml", GOOD)
    write(tmp_path / "extra", "bad.yaml", BASE + "label: z\n")
    write(tmp_path / "extra", "again.yaml", GOOD)
    scan = scan_specs([BUNDLED_TASKS_DIR, tmp_path / "extra", tmp_path / "missing"])
    assert {"heart_disease", "breast_cancer", "extra_task"} <= {s.name for s in scan.specs}
    problems = {e.path.name: e.problem for e in scan.errors}
    assert set(problems) == {"bad.yaml", "good.yaml", "missing"}  # sorted: again.yaml defines extra_task first
    assert "key 'label' is given twice" in problems["bad.yaml"] and "already defined in" in problems["good.yaml"]
    assert problems["missing"] == "MEDDIAG_TASKS_DIR is not a folder"


def test_reader_columns_take_the_spec_names():
    import polars as pl

    from meddiag_pipelines.specs import spec_columns

    records = pl.DataFrame({"id": ["a"], "label": ["x"], "patient_id": [None], "text": ["t"], "source": ["f.png"]})
    text = TaskSpec(name="notes", modality="text", label="dx", text="note", id="nid", patient_id="pid")
    assert spec_columns(records, text).columns == ["nid", "dx", "pid", "note", "source"]
    image = TaskSpec(name="scans", modality="image", label="finding", id="id")  # no text, no patient column
    assert spec_columns(records, image).columns == ["id", "finding", "patient_id", "text", "source"]
