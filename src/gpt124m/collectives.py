"""Rank reductions, and seeing through DDP: everything code needs to run the same under torchrun
and in a plain process. Each call is a no-op when no process group is running."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def running() -> bool:
    """A process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place."""
    if running():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks, as a new tensor (gloo has no AVG, so CPU sums and divides)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if value.is_cuda else dist.ReduceOp.SUM)
        if not value.is_cuda:
            value /= dist.get_world_size()
    return value


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is true on every rank, so that ranks take the same branch."""
    if not running():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def backend() -> str | None:
    return dist.get_backend() if dist.is_initialized() else None


def model_config(model: nn.Module):
    """The ModelConfig of a model, looking through a DDP wrapper (FSDP2 keeps the class)."""
    return getattr(model, "module", model).config
