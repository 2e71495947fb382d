"""The benchmarks still run: every ``python -m bench <name> --size smoke`` prints valid JSON lines with the
common fields (untimed: the figures themselves are in bench/README.md). Generated data goes to a temporary
folder."""

import json
import subprocess
import sys

import pytest

from meddiag_pipelines_tests.conftest import REPO

COMMON = {"name", "impl", "size", "seconds", "peak_rss_mb"}


def run_bench(name: str, tmp_path, *extra: str, module: tuple[str, ...] | None = None) -> list[dict]:
    """``module``: a script run as ``python -m <module>`` in place of ``python -m bench <name>``."""
    command = [sys.executable, "-m", *(module or ("bench", name)), "--size", "smoke", *extra]
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "MEDDIAG_BENCH_DIR": str(tmp_path), "MEDDIAG_FORCE_CPU": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    for line in lines:
        assert COMMON <= set(line), line
        assert line["name"] == name and line["size"] == "smoke"
        assert line.get("ok", True), line
    return lines


SLOW_BENCHES = ("orchestration", "training", "validation", "distributed")  # each over 5 s at smoke size


@pytest.mark.parametrize("name", ["ingest", "sensor", *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_BENCHES)])
def test_bench_smoke(name, tmp_path):
    run_bench(name, tmp_path)


@pytest.mark.slow
def test_pneumonia_like_data_and_recipe_smoke(tmp_path):
    import numpy as np

    (line,) = run_bench("pneumonia_like", tmp_path, "--mode", "direct", "--threads", "1", "--width", "8")
    assert 0 <= line["test_auroc"] <= 1 and line["epochs_run"] <= 2 and line["cpu_minutes"] > 0
    with np.load(tmp_path / "pneumonia_like_smoke_0.npz") as data:  # MedMNIST layout, the test split shifted
        assert data["train_images"].shape == (160, 28, 28) and data["train_labels"].shape == (160, 1)
        assert abs(data["test_labels"].mean() - 0.625) < 0.01 and data["test_images"].std() < data["val_images"].std()


@pytest.mark.slow
def test_model_choice_smoke_on_a_first_framingham_batch_and_its_cost(tmp_path):
    seed, summary = run_bench("model_choice", tmp_path)
    assert seed["selection"]["evidence"] == "cross-validation" and seed["chosen"] == seed["selection"]["chosen"]
    assert seed["n_train"] + seed["n_val"] + seed["n_test"] == 600
    assert set(seed["test_auroc"]) == {"xgboost", "logistic"}
    assert summary["seeds"] == 1 and summary["xgboost_chosen"] == (seed["chosen"] == "xgboost")
    (cost,) = run_bench("model_choice", tmp_path, "--cost")
    assert cost["rows"] == 1_000 and cost["cv_s"] > 0 and 0 < cost["cv_difference_se"] < 0.2


@pytest.mark.slow
def test_gpu_check_runs_every_model_on_the_cpu(tmp_path):
    lines = run_bench("gpu_check", tmp_path, module=("bench.gpu_check",))
    assert all(line["device"] == "cpu" and "CPU" in line["note"] for line in lines)
    by_impl = {line["impl"]: line for line in lines}
    large = ["resnet50_finetune_bf16_cpu", "vit_small_patch16_224_finetune_bf16_cpu", "bert_encoder_finetune_bf16_cpu"]
    assert {"xgboost_hist_cpu", "cnn_bf16_amp_cpu", "text_models_cpu", *large} == set(by_impl)
    for impl in large:
        rate = by_impl[impl].get("images_per_s") or by_impl[impl].get("sequences_per_s")
        assert rate > 0 and by_impl[impl]["peak_gpu_mb"] is None and by_impl[impl]["params_m"] > 0
