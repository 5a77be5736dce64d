"""AdamW with weight decay only where it regularises: matrices and embeddings, not biases or norms."""

from __future__ import annotations

import inspect

import torch
from torch import nn

FUSED_DEVICES = ("cuda", "cpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """The fused kernel on CUDA and CPU; the default foreach path elsewhere (e.g. MPS).

    On CPU the fused step is about 5x faster than foreach for the 124M model (0.07 s vs 0.40 s
    on two cores), 5-8% of a whole training step.
    """
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: nothing for the optimizer to update")
    fused = (
        device_type in FUSED_DEVICES and "fused" in inspect.signature(torch.optim.AdamW).parameters
    )
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)
