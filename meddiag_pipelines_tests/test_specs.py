from pathlib import Path

import pytest

from meddiag_pipelines.specs import SpecError, load_spec, load_specs, spec_dirs


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


GOOD = "name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: '1'\nclasses: ['0', '1']\n"


def test_bundled_specs_load():
    names = {s.name for s in load_specs()}
    assert {"heart_disease", "breast_cancer"} <= names


def test_tasks_dir_adds_specs_without_code(tmp_path, monkeypatch):
    write(tmp_path, "extra.yaml", GOOD)
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    assert tmp_path in spec_dirs()
    assert "extra_task" in {s.name for s in load_specs()}


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("modality: tabular\nlabel: y\nid: rid\n", "name", "Field required"),
        ("name: t\nmodality: audio\nlabel: y\nid: rid\n", "modality", "Input should be"),
        ("name: Bad-Name\nmodality: tabular\nlabel: y\nid: rid\n", "name", "lower-case"),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\npositive: z\nclasses: [a, b]\n", "(top level)", "positive class"),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\nsplit: {train: 0.9, val: 0.2, test: 0.2}\n", "split", "sum to 1"),
        ("name: t\nmodality: text\nlabel: y\nid: rid\n", "(top level)", "'text' key"),
        ("name: t\nmodality: tabular\nlabel: y\nid: rid\nunknown_key: 1\n", "unknown_key", "Extra inputs"),
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


def test_duplicate_task_names_are_refused(tmp_path):
    write(tmp_path / "a", "one.yaml", GOOD)
    write(tmp_path / "b", "two.yaml", GOOD)
    with pytest.raises(SpecError, match="already defined in"):
        load_specs([tmp_path / "a", tmp_path / "b"])


def test_readme_spec_examples_are_valid_specs():
    import re

    import yaml

    from meddiag_pipelines.specs import TaskSpec
    from meddiag_pipelines_tests.conftest import REPO

    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    names = [TaskSpec.model_validate(doc).name for block in blocks for doc in yaml.safe_load_all(block)]
    assert names == ["sepsis_risk", "pneumonia_xray", "discharge_specialty"]
