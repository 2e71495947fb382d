"""A pretrained Hugging Face encoder fine-tuned as a sequence classifier (the spec's ``text_model``).

``text_model`` is a local model folder (read with ``local_files_only=True``: never the network) or
``hub:<id>`` (downloaded when online; ``HF_HUB_OFFLINE=1`` keeps it to the local cache). The folder may be a
classifier or a bare encoder (a sentence-transformers folder such as all-MiniLM-L6-v2 is a plain BertModel):
its encoder (``AutoModel``) gets a new linear head of the task's classes, reading the mean of the token states
(``text_encoder.pooling: mean``, what sentence-transformers checkpoints are trained to make meaningful) or the
first token's state (``cls``). Weights are read from safetensors only (``use_safetensors=True``), so loading
never unpickles.

Training (``train_encoder``): the whole encoder (or, with ``text_encoder.lora``, LoRA adapters on the
attention projections, through peft) and the head with AdamW and a one-cycle schedule, the head at its own
peak (``head_learning_rate``: it starts from random weights), class-balanced cross-entropy, at most
``max_length`` tokens per text. An optuna search over the peak learning rate, weight
decay and warm-up (the spec's settings are the first trial) prunes a trial whose per-epoch validation macro-F1
falls below the median of earlier trials at that epoch; it starts no trial that would overrun
``training.time_budget_s``. The best epoch of the best trial is kept, then temperature-scaled on validation.

Saved as ``out_dir/encoder``: the encoder's Hugging Face config, tokenizer files and ``model.safetensors`` (LoRA
adapters merged into the weights, so the version folder stands alone), ``head.safetensors``, ``terms.json`` (frequent training
words, for ``top_terms_per_class``) and ``model.json`` (kind, classes, temperature, max_length, pooling, tuning).
Explanations reuse the word occlusion of ``models.explain_texts`` (it needs only ``logits(texts)``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddiag_pipelines.atomic import atomic_write_json, publish_new_dir, staging_dir
from meddiag_pipelines.specs import HUB_PREFIX, TaskSpec, TextEncoderSpec
from meddiag_pipelines.text.shared import (
    FORMAT_VERSION,
    class_weights,
    fit_temperature,
    frequent_terms,
    macro_f1,
    probs_from_logits,
)

KIND = "hf_encoder"
N_TERMS = 1000  # frequent training words scored one by one for the top-terms table (a forward pass each)
EVAL_BATCH = 64
# Names of the attention projections LoRA adapts, across BERT / RoBERTa (query, key, value), DistilBERT (q_lin
# ...), and decoder-style or fused blocks (q_proj ..., qkv, Wqkv).
ATTENTION_PROJECTIONS = (
    "query",
    "key",
    "value",
    "q_lin",
    "k_lin",
    "v_lin",
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv",
    "Wqkv",
)
TUNING_OBJECTIVE = "validation macro-F1 (best epoch); trials pruned below the median of earlier trials per epoch"


def _transformers():
    """transformers (the ``large`` extra), importable on the CPU wheel of torch too (its image utilities import
    torchvision)."""
    from meddiag_pipelines.torch_compat import declare_missing_torchvision_ops

    declare_missing_torchvision_ops()
    import transformers

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" notice on every load
    transformers.logging.disable_progress_bar()  # per-load weight bars in the step's logs
    return transformers


def encoder_source(text_model: str) -> tuple[str, bool]:
    """(name or folder for ``from_pretrained``, local_files_only). A hub id only when written ``hub:<id>``."""
    if text_model.startswith(HUB_PREFIX):
        return text_model[len(HUB_PREFIX) :].strip(), False
    folder = Path(text_model)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"text_model {folder}: not a Hugging Face model folder (no config.json); "
            f"name a hub model as {HUB_PREFIX}<id>"
        )
    return str(folder), True


HEAD_FILE = "head.safetensors"


def _length_order(texts: list[str]) -> np.ndarray:
    """The order texts are scored in: by length (less padding per batch)."""
    return np.argsort([len(t or "") for t in texts], kind="stable")


def _classifier(encoder, n_labels: int, pooling: str):
    """``encoder`` (an ``AutoModel``) with a linear head: ``(input_ids, attention_mask) -> (n, k)`` logits."""
    import torch
    from torch import nn

    class PooledClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.pooling = pooling
            self.dropout = nn.Dropout(0.1)
            self.classifier = nn.Linear(encoder.config.hidden_size, n_labels)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.pooling == "cls":
                return self.classifier(self.dropout(states[:, 0]))
            mask = attention_mask.unsqueeze(-1).to(states.dtype)  # padding tokens do not count in the mean
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return self.classifier(self.dropout(pooled))

    return PooledClassifier()


def _lora(net, cfg: TextEncoderSpec):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in net.named_modules()
            if n.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS and hasattr(m, "weight")
        }
    )
    if not targets:
        raise ValueError("text_encoder.lora: no attention projections found in this model")
    config = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        lora_dropout=0.1,
        target_modules=targets,
    )
    return get_peft_model(net, config)


def _pretrained(text_model: str, n_labels: int, cfg: TextEncoderSpec):
    tf = _transformers()
    source, local_only = encoder_source(text_model)
    tokenizer = tf.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    encoder = tf.AutoModel.from_pretrained(source, local_files_only=local_only, use_safetensors=True)
    return tokenizer, _classifier(_lora(encoder, cfg) if cfg.lora else encoder, n_labels, cfg.pooling)


@dataclass
class _Encoder:
    net: object  # (input_ids, attention_mask) -> logits: an encoder and its head (LoRA merged once saved)
    tokenizer: object
    classes: list[str]
    temperature: float
    max_length: int
    terms: list[str] = field(default_factory=list)
    tuning: dict = field(default_factory=dict)
    device: str = "cpu"

    def _inputs(self, texts: list[str]):
        enc = self.tokenizer(
            [t or "" for t in texts], truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def full_logits(self, texts: list[str]) -> np.ndarray:
        """(n, k) logits, texts scored in length order (less padding) and returned in the given order."""
        import torch

        self.net.eval()
        order = _length_order(texts)
        out = np.zeros((len(texts), len(self.classes)))
        with torch.no_grad():
            for i in range(0, len(order), EVAL_BATCH):
                idx = order[i : i + EVAL_BATCH]
                ids, mask = self._inputs([texts[j] for j in idx])
                out[idx] = self.net(ids, mask).float().cpu().numpy()
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        """The shapes of the other text models: binary (n,) logit of classes[1], multi-class (n, k)."""
        z = self.full_logits(list(texts))
        return z[:, 1] - z[:, 0] if len(self.classes) == 2 else z

    def predict(self, texts: list[str]) -> np.ndarray:
        return probs_from_logits(self.logits(texts), self.temperature)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, hidden) pooled encoder states: what the linear head reads (its input, caught by a hook)."""
        texts, caught = list(texts), []
        hook = self.net.classifier.register_forward_pre_hook(lambda _, args: caught.append(args[0].float().cpu()))
        try:
            self.full_logits(texts)
        finally:
            hook.remove()
        out = np.zeros((len(texts), self.net.classifier.in_features), dtype=np.float32)
        if caught:
            out[_length_order(texts)] = np.concatenate([c.numpy() for c in caught])
        return out

    def module(self):
        """The encoder as an ``nn.Module``: ``(input_ids, attention_mask) -> (n, k)`` logits before the
        temperature (for ONNX export); ``self.tokenizer`` makes its inputs."""
        return self.net.eval()

    def save(self, folder: Path) -> None:
        """The whole folder is built aside and published once (nothing half-written is ever seen)."""
        from safetensors.torch import save_file

        net = self.net
        if hasattr(net.encoder, "merge_and_unload"):
            net.encoder = net.encoder.merge_and_unload()
        staging = staging_dir(folder)
        net.encoder.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in net.classifier.state_dict().items()}, str(staging / HEAD_FILE))
        self.tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "terms.json", self.terms)
        atomic_write_json(
            staging / "model.json",
            {
                "format_version": FORMAT_VERSION,
                "kind": KIND,
                "classes": self.classes,
                "temperature": self.temperature,
                "max_length": self.max_length,
                "pooling": net.pooling,
                "tuning": self.tuning,
                "architecture": type(net.encoder).__name__,
            },
        )
        publish_new_dir(staging, folder)

    @classmethod
    def load(cls, folder: Path, config: dict, device: str = "cpu") -> _Encoder:
        tf = _transformers()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        net = _load_net(tf, folder, config, len(config["classes"])).to(device)
        terms = json.loads((folder / "terms.json").read_text(encoding="utf-8"))
        return cls(
            net,
            tokenizer,
            list(config["classes"]),
            float(config["temperature"]),
            int(config["max_length"]),
            terms,
            dict(config.get("tuning") or {}),
            device,
        )


def _load_net(tf, folder: Path, config: dict, n_labels: int):
    from safetensors.torch import load_file

    encoder = tf.AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    net = _classifier(encoder, n_labels, config["pooling"])
    net.classifier.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return net


def _trainable_state(net) -> dict:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def _param_groups(net, head_lr: float, encoder_lr: float) -> list[dict]:
    """The new head at its own peak learning rate, the encoder's trainable weights (all, or LoRA's) at theirs."""
    return [
        {"params": list(net.classifier.parameters()), "lr": head_lr},
        {"params": [p for p in net.encoder.parameters() if p.requires_grad], "lr": encoder_lr},
    ]


def _fit_trial(
    spec: TaskSpec, params: dict, data: tuple, classes: list[str], device: str, deadline: float, report=None
) -> tuple[_Encoder, float]:
    """One fine-tuning run; ``report(f1, epoch)`` may raise optuna's TrialPruned. The best epoch is kept."""
    import torch

    cfg = spec.text_encoder
    train_texts, y_train, val_texts, y_val = data
    torch.manual_seed(spec.training.seed)
    gen = torch.Generator().manual_seed(spec.training.seed)
    tokenizer, net = _pretrained(spec.text_model, len(classes), cfg)
    net.to(device)
    model = _Encoder(net, tokenizer, list(classes), 1.0, cfg.max_length, device=device)
    groups = _param_groups(net, cfg.head_learning_rate, params["learning_rate"])
    opt = torch.optim.AdamW(groups, weight_decay=params["weight_decay"])
    steps_per_epoch = math.ceil(len(train_texts) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in groups],
        pct_start=params["warmup"],
        total_steps=cfg.epochs * steps_per_epoch,
        anneal_strategy="linear",
    )
    weights = torch.tensor(class_weights(y_train, len(classes)), dtype=torch.float32, device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    y_t = torch.tensor(y_train, dtype=torch.long)
    best_f1, best_state = -1.0, None
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(train_texts), generator=gen).numpy()
        for i in range(0, len(order), cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            ids, mask = model._inputs([train_texts[j] for j in batch])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = net(ids, mask)
            loss = loss_fn(logits.float(), y_t[batch].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        f1 = macro_f1(y_val, probs_from_logits(model.full_logits(val_texts), 1.0), len(classes))
        if f1 > best_f1 + 1e-9:
            best_f1, best_state = f1, _trainable_state(net)
        if report is not None:
            report(f1, epoch)
        if time.monotonic() > deadline:
            break
    net.load_state_dict(best_state, strict=False)
    return model, best_f1


def _suggest(trial, cfg: TextEncoderSpec) -> dict:
    return {
        "learning_rate": trial.suggest_float("learning_rate", cfg.learning_rate / 4, cfg.learning_rate * 4, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, max(0.1, cfg.weight_decay)),
        "warmup": trial.suggest_float("warmup", 0.05, 0.3),
    }


def train_encoder(
    train_texts: list[str],
    y_train: np.ndarray,
    val_texts: list[str],
    y_val: np.ndarray,
    classes: list[str],
    spec: TaskSpec,
    device: str,
    deadline: float,
) -> tuple[_Encoder, float]:
    """The optuna search (``text_encoder.trials``, the spec's settings first), the best trial's best epoch kept,
    temperature-scaled; returns it with its validation macro-F1 (after scaling, as the other models report)."""
    import optuna

    cfg = spec.text_encoder
    data = (list(train_texts), np.asarray(y_train), list(val_texts), np.asarray(y_val))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.training.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    study.enqueue_trial({"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "warmup": 0.1})
    kept: dict[str, tuple[_Encoder, float]] = {}  # the best trial's model, so it is not trained twice

    def objective(trial: optuna.Trial) -> float:
        def report(f1: float, epoch: int) -> None:
            trial.report(f1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        model, f1 = _fit_trial(spec, _suggest(trial, cfg), data, classes, device, deadline, report)
        if "best" not in kept or f1 > kept["best"][1]:  # optuna's choice: the first best
            kept["best"] = (model, f1)
        return f1

    def within_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """No trial is started that the time left would not see through (judged by the one just run)."""
        if trial.datetime_complete and trial.datetime_start:
            if time.monotonic() + (trial.datetime_complete - trial.datetime_start).total_seconds() > deadline:
                study.stop()

    study.optimize(objective, n_trials=cfg.trials, callbacks=[within_budget])
    model, _ = kept["best"]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    model.tuning = {
        "best": dict(study.best_params),
        "n_trials": len(study.trials),
        "n_pruned": pruned,
        "objective": TUNING_OBJECTIVE,
    }
    model.temperature = fit_temperature(model.logits(val_texts), data[3])
    model.terms = frequent_terms(train_texts, N_TERMS)
    return model, macro_f1(data[3], model.predict(val_texts), len(classes))
