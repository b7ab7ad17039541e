"""AdamW with weight-decay groups, and the learning-rate schedule as a pure function of the step.

The schedule is evaluated from the step number alone, so a resumed run gets exactly the LR of the
uninterrupted one without any scheduler state to restore, and it works the same under every engine
(DeepSpeed included) because the trainer writes it into the optimizer's param groups before each step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recipes.training import StageSection


def param_kind(module: nn.Module, name: str, param: nn.Parameter) -> str:
    """'embedding' (incl. a tied head), 'norm' (norm gains), 'bias', or 'weight' (matmul weights)."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if name == "bias":
        return "bias"
    if param.ndim < 2:  # RMSNorm/LayerNorm gains: the only 1-D weights in a Llama decoder
        return "norm"
    return "weight"


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    """Two AdamW groups: decayed and exempt parameters (each parameter once, even when tied)."""
    decay, exempt, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (exempt if param_kind(module, name, param) in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, section: StageSection, device: torch.device) -> torch.optim.Optimizer:
    fused = section.fused_optimizer if section.fused_optimizer is not None else device.type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, section.weight_decay, section.no_decay),
        lr=section.lr,
        betas=tuple(section.betas),
        eps=section.eps,
        fused=fused,
        foreach=None if fused else True,
    )


def lr_at(section: StageSection, step: int) -> float:
    """LR of optimizer step `step` (0-based): linear warmup to lr, then the configured decay to min_lr."""
    peak, floor, total, warmup = (
        section.lr,
        section.lr * section.min_lr_ratio,
        section.max_steps,
        section.warmup_steps,
    )
    if step < warmup:
        return peak * (step + 1) / warmup
    if section.schedule == "constant":
        return peak
    if section.schedule == "wsd":
        decay_start = total - max(1, round(section.decay_fraction * total))
        if step < max(decay_start, warmup):
            return peak
        begin = max(decay_start, warmup)
    else:
        begin = warmup
    span = total - 1 - begin
    progress = 1.0 if span <= 0 else (step - begin) / span
    if section.schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak + (floor - peak) * progress  # linear and the wsd decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
