"""The one GPU script: ``python -m bench.gpu_check`` on a machine with a CUDA GPU (about a minute).

Prints JSON lines: XGBoost ``device="cuda"`` (QuantileDMatrix, hist) rows x features x rounds per second;
one CNN training step loop with torch bf16 autocast (AMP) at 28x28, and inference; the text models trained
and predicting on CUDA. With no GPU visible (or MEDDIAG_FORCE_CPU=1) it runs the same code on the CPU at a
small size and says so in a ``note`` on every line, so it never fails for want of a GPU.
"""

from __future__ import annotations

import time

from bench import emit, peak_rss_mb


def _cuda() -> tuple[bool, str]:
    from meddiag_pipelines.device import cuda_available

    if not cuda_available():
        return False, "no GPU visible (or MEDDIAG_FORCE_CPU=1): ran on the CPU at a small size; CUDA figures still pending"
    import torch

    return True, f"CUDA: {torch.cuda.get_device_name(0)}"


def cnn_amp(device: str, seconds: float, batch: int = 512, width: int = 32) -> dict:
    import torch
    from torch import nn

    from meddiag_pipelines.imaging.model import ResNet18Small

    torch.manual_seed(0)
    model = ResNet18Small(1, 1, width, 28).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, 1), device=device).float()
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = torch.bfloat16

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=dtype):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n == 0:
        step()
        n += batch
    sync()
    train = n / (time.perf_counter() - start)
    model.eval()
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype):
        model(x)
        sync()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or n == 0:
            model(x)
            n += batch
        sync()
    return {"train_images_per_s": train, "infer_images_per_s": n / (time.perf_counter() - start), "amp": "bf16", "batch": batch}


def main() -> None:
    from bench.training import text_cpu, xgboost_cpu

    cuda, note = _cuda()
    device = "cuda" if cuda else "cpu"
    base = {"name": "gpu_check", "device": device, "note": note}
    rows, rounds = (2_000_000, 100) if cuda else (50_000, 10)
    r = xgboost_cpu(rows, 50, rounds, device=device)
    emit({**base, "impl": f"xgboost_hist_{device}", "size": f"{rows}x50x{rounds}", **r, "peak_rss_mb": peak_rss_mb()})
    start = time.perf_counter()
    r = cnn_amp(device, seconds=10.0 if cuda else 1.0, batch=512 if cuda else 64)
    emit({**base, "impl": f"cnn_bf16_amp_{device}", "size": "28x28", "seconds": time.perf_counter() - start, **r,
          "images_per_s": r["train_images_per_s"], "peak_rss_mb": peak_rss_mb()})  # fmt: skip
    docs = 20_000 if cuda else 300
    r = text_cpu(docs, epochs=3 if cuda else 1, device=device)
    emit({**base, "impl": f"text_models_{device}", "size": docs, **r, "docs_per_s": r["train_docs_per_s"], "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
