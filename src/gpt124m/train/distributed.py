"""torchrun / DDP / FSDP2 setup. The model never learns about ranks; only this module does."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gpt124m.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun: a process group runs, even for one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched


def init(device_name: str = "auto") -> Dist:
    """Read torchrun's environment; start NCCL on CUDA, gloo elsewhere. A plain process: no-op.

    `torchrun --nproc_per_node 1` does start a process group and DDP/FSDP: what one process
    under torchrun runs is then what each of N would."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ
    if world_size <= 1 and not launched:
        return Dist(device=resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        # A launcher that gives each process one GPU (SLURM --gpus-per-task=1) shows it as cuda:0.
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(
        rank=rank, local_rank=local_rank, world_size=world_size, device=device, launched=True
    )


def shutdown() -> None:
    """Tear the process group down; call it in a `finally`.

    On the normal path every rank first waits for the others (rank 0 still writes results when
    the rest are done): a gloo rank that destroys its group while a peer still holds theirs can
    abort at exit, which torchrun reports as a failed run. While an exception propagates there
    is no waiting: the peers may never arrive.
    """
    if not dist.is_initialized():
        return
    if sys.exc_info()[0] is None:
        dist.barrier()
    dist.destroy_process_group()


def wrap(model: nn.Module, info: Dist, parallel: str) -> nn.Module:
    """DDP replicates; FSDP2 `fully_shard` shards each block, then the root (tied embeddings)."""
    if not info.enabled:
        if parallel == "fsdp":
            log.warning("--parallel fsdp: one process (not under torchrun), so nothing is sharded")
        return model
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The mesh follows our device, not "CUDA if present": --device cpu on a GPU host stays on CPU.
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
