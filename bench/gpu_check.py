"""The one GPU script: ``python -m bench.gpu_check`` on a machine with a CUDA GPU (about a minute).

Prints JSON lines: XGBoost ``device="cuda"`` (QuantileDMatrix, hist) rows x features x rounds per second;
one CNN training step loop with torch bf16 autocast (AMP) at 28x28, and inference; the text models trained
and predicting on CUDA; and fine-tuning steps (AdamW, bf16 autocast) of the large models, random-initialised
so nothing is downloaded: timm's ResNet-50 and ViT-S/16 at 224 px and a BERT-base-sized encoder
(transformers, 768 hidden, 12 layers, 12 heads) at 256 tokens, each with its images or sequences per second
and peak GPU memory. With no GPU visible (or MEDDIAG_FORCE_CPU=1) it runs the same code on the CPU at a small
size (64 px, a batch of 2, a 2-layer encoder) and says so in a ``note`` on every line, so it never fails for
want of a GPU.
"""

from __future__ import annotations

import argparse
import time

from bench import MB, emit, peak_rss_mb

# size -> (on CUDA, on the CPU). encoder: sequence length, batch, hidden, layers, heads.
SIZES = {
    "default": (
        {
            "xgb_rows": 2_000_000,
            "xgb_rounds": 100,
            "seconds": 10.0,
            "cnn_batch": 512,
            "text_docs": 20_000,
            "text_epochs": 3,
            "px": 224,
            "image_batch": 128,
            "encoder": (256, 32, 768, 12, 12),
            "warmup": 2,
        },
        {
            "xgb_rows": 50_000,
            "xgb_rounds": 10,
            "seconds": 1.0,
            "cnn_batch": 64,
            "text_docs": 300,
            "text_epochs": 1,
            "px": 64,
            "image_batch": 2,
            "encoder": (32, 2, 64, 2, 2),
            "warmup": 1,
        },
    ),
    "smoke": 2
    * (
        {
            "xgb_rows": 2_000,
            "xgb_rounds": 5,
            "seconds": 0.0,
            "cnn_batch": 8,
            "text_docs": 120,
            "text_epochs": 1,
            "px": 32,
            "image_batch": 2,
            "encoder": (16, 2, 32, 1, 2),
            "warmup": 0,
        },
    ),
}


def _cuda() -> tuple[bool, str]:
    from meddiag_pipelines.device import cuda_available

    if not cuda_available():
        return (
            False,
            "no GPU visible (or MEDDIAG_FORCE_CPU=1): ran on the CPU at a small size; CUDA figures still pending",
        )
    import torch

    return True, f"CUDA: {torch.cuda.get_device_name(0)}"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _rate(step, device: str, seconds: float, per_step: int, warmup: int = 2) -> float:
    """Items per second of ``step()`` (``per_step`` items each) after ``warmup`` untimed steps; one step at least."""
    for _ in range(warmup):
        step()
    _sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n == 0:
        step()
        n += per_step
    _sync(device)
    return n / (time.perf_counter() - start)


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

    train = _rate(step, device, seconds, batch, warmup=3)
    model.eval()
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype):
        infer = _rate(lambda: model(x), device, seconds, batch, warmup=1)
    return {"train_images_per_s": train, "infer_images_per_s": infer, "amp": "bf16", "batch": batch}


def fine_tune(model, forward, y, device: str, seconds: float, warmup: int = 2) -> dict:
    """Training steps of ``model`` (AdamW, cross-entropy, bf16 autocast) where ``forward(model)`` gives the logits
    of one batch whose labels are ``y``: items per second and peak GPU memory (None on the CPU)."""
    import torch

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = loss_fn(forward(model).float(), y)
        loss.backward()
        opt.step()

    rate = _rate(step, device, seconds, len(y), warmup)
    return {
        "train_per_s": rate,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / MB if device == "cuda" else None,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "amp": "bf16",
        "batch": len(y),
    }


def backbone_finetune(arch: str, device: str, seconds: float, size: int, batch: int, warmup: int = 2) -> dict:
    """A timm backbone (random init; imported through the project's one timm entry point) on 3-channel images."""
    import torch

    from meddiag_pipelines.imaging.backbones import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    extra = {"img_size": size} if arch.startswith("vit") else {}
    model = timm.create_model(arch, pretrained=False, num_classes=2, **extra)
    x = torch.rand(batch, 3, size, size, device=device)
    if device == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    return fine_tune(model, lambda m: m(x), y, device, seconds, warmup)


def encoder_finetune(
    device: str, seconds: float, length: int, batch: int, hidden: int, layers: int, heads: int, warmup: int = 2
) -> dict:
    """A BERT encoder with a classification head (transformers, random init) on random token ids."""
    import torch

    from meddiag_pipelines.imaging.backbones import import_timm

    import_timm()  # transformers imports torchvision too: the same shim for its detection ops
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max(512, length),
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 2, (batch,), device=device)
    return fine_tune(model, lambda m: m(input_ids=ids, attention_mask=mask).logits, y, device, seconds, warmup)


def main(argv: list[str] | None = None) -> None:
    from bench.training import text_cpu, xgboost_cpu
    from meddiag_pipelines.device import torch_settings

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="smoke: tiny, to check it runs")
    size = parser.parse_args(argv).size
    cuda, note = _cuda()
    device = "cuda" if cuda else "cpu"
    cfg = SIZES[size][0 if cuda else 1]
    base = {"name": "gpu_check", "size": size, "device": device, "note": note}
    r = xgboost_cpu(cfg["xgb_rows"], 50, cfg["xgb_rounds"], device=device)
    emit(
        {
            **base,
            "impl": f"xgboost_hist_{device}",
            "shape": f"{cfg['xgb_rows']}x50x{cfg['xgb_rounds']}",
            **r,
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    with torch_settings(device, deterministic=False):  # on the CPU: the threads not already busy
        start = time.perf_counter()
        r = cnn_amp(device, cfg["seconds"], cfg["cnn_batch"])
        emit(
            {
                **base,
                "impl": f"cnn_bf16_amp_{device}",
                "shape": "28x28",
                "seconds": time.perf_counter() - start,
                **r,
                "images_per_s": r["train_images_per_s"],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        r = text_cpu(cfg["text_docs"], epochs=cfg["text_epochs"], device=device)
        emit(
            {
                **base,
                "impl": f"text_models_{device}",
                "shape": f"{cfg['text_docs']} docs",
                **r,
                "docs_per_s": r["train_docs_per_s"],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        large_models(base, device, cfg)


def large_models(base: dict, device: str, cfg: dict) -> None:
    """Fine-tuning throughput and peak GPU memory of the two timm backbones and the BERT encoder."""
    for arch in ("resnet50", "vit_small_patch16_224"):
        start = time.perf_counter()
        r = backbone_finetune(arch, device, cfg["seconds"], cfg["px"], cfg["image_batch"], cfg["warmup"])
        rate = r.pop("train_per_s")
        emit(
            {
                **base,
                "impl": f"{arch}_finetune_bf16_{device}",
                "shape": f"{cfg['px']}px",
                "seconds": time.perf_counter() - start,
                **r,
                "images_per_s": rate,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    length, batch, hidden, layers, heads = cfg["encoder"]
    start = time.perf_counter()
    r = encoder_finetune(device, cfg["seconds"], length, batch, hidden, layers, heads, cfg["warmup"])
    rate = r.pop("train_per_s")
    emit(
        {
            **base,
            "impl": f"bert_encoder_finetune_bf16_{device}",
            "shape": f"{length} tokens, {layers}x{hidden}, {heads} heads",
            "seconds": time.perf_counter() - start,
            **r,
            "sequences_per_s": rate,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


if __name__ == "__main__":
    main()
