"""What both evaluations share: autocast, the model's config through DDP, and rank reductions."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`; fp32 or None runs as is."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_config(model: nn.Module):
    """The ModelConfig of a model, looking through a DDP wrapper (FSDP2 keeps the class)."""
    inner = getattr(model, "module", model)
    return inner.config


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place when torch.distributed is running; a no-op otherwise."""
    if distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is true on every rank, so that ranks take the same branch."""
    if not distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
