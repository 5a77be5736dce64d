"""`--micro-batch-size auto`: the largest micro-batch that trains on this device, found by trial.

Auto never changes what is learned: the tokens per optimizer step stay `--total-batch-tokens`,
and only their split into micro-batches changes, with gradient accumulation making up the rest
(the trainer weights micro-batches so any split gives the same loss). So the candidates are the
divisors of the sequences each rank handles per step.

On CUDA each trial is two whole training steps on a throwaway copy of the model: forward,
backward and an AdamW step, the second with the optimizer state the first one made, so gradients
and optimizer state are counted alongside the activations, not just activations.
A CUDA out-of-memory error means "does not fit". The whole per-rank batch is tried first; if it
fails, bisecting the smaller candidates halves the range each trial. Trials run eagerly; for a
compiled run their loss makes the logits, as Inductor's does (eager training never makes them, so
an eager trial alone would pick batches a compiled step cannot hold). DDP's gradient buckets are
reserved during them, and FSDP's sharding is ignored (the trial holds the whole model, so it errs
on the safe side). Ranks take the smallest choice of any rank.

On CPU and MPS running out of memory is not an exception one can catch (the system swaps, or
kills the process), so there auto takes, without trials, the largest candidate of at most
`HOST_AUTO_TOKENS` tokens: 8 sequences of 1024, 32 of 256.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
from collections.abc import Callable

import torch
from torch import nn

from gpt124m.device import autocast, is_out_of_memory
from gpt124m.train.config import AUTO
from gpt124m.train.optim import build_adamw

log = logging.getLogger(__name__)

HOST_AUTO_TOKENS = 8192


def candidates(sequences_per_rank: int) -> list[int]:
    """Micro-batch sizes that split a rank's share of a step evenly, ascending."""
    return [b for b in range(1, sequences_per_rank + 1) if sequences_per_rank % b == 0]


def largest_fitting(sizes: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending `sizes` for which `fits` holds, assuming that whatever fits
    a batch also fits every smaller one. The largest is tried first (usually it fits, one trial);
    then bisection. None if not even the smallest fits."""
    if not sizes:
        return None
    if fits(sizes[-1]):
        return sizes[-1]
    lo, hi = -1, len(sizes) - 1  # sizes[hi] is known not to fit; sizes[lo] to fit (-1: none)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(sizes[mid]):
            lo = mid
        else:
            hi = mid
    return sizes[lo] if lo >= 0 else None


class TrialStep:
    """`fits(batch)`: do training steps of `batch` x `seq_len` tokens run on `device`?

    The step runs on a copy of the model, so the model itself is untouched (its weights may stay
    on the CPU), and inside `fork_rng`, so dropout in a trial leaves the run's random streams as
    they were. `reserve_bytes` stay allocated during each trial (DDP's gradient buckets).
    `logits`: the loss makes the [tokens, vocabulary] logits, as a compiled step's does.
    `close()` frees the copy."""

    def __init__(
        self,
        model: nn.Module,
        *,
        seq_len: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        reserve_bytes: int = 0,
        logits: bool = False,
    ):
        self.seq_len, self.device, self.amp_dtype = seq_len, device, amp_dtype
        self.reserve_bytes, self.logits = reserve_bytes, logits
        self.probe: nn.Module | None = copy.deepcopy(model).to(device).train()

    def __call__(self, batch: int) -> bool:
        ok = False
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                ok = self._step(batch)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
        finally:
            self.probe.zero_grad(set_to_none=True)
            _release(self.device)
        log.info(
            "micro-batch %d x %d tokens: %s", batch, self.seq_len, "fits" if ok else "out of memory"
        )
        return ok

    def _step(self, batch: int) -> bool:
        device = self.device
        reserve = torch.empty(self.reserve_bytes, dtype=torch.uint8, device=device)
        optimizer = build_adamw(
            self.probe, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type
        )
        ids = torch.zeros((batch, self.seq_len), dtype=torch.long, device=device)
        # Two steps: AdamW makes its state in the first step(), after backward, so only the
        # second forward and backward run beside it, as every step of the real run after the
        # first does (for gpt2 that state is 8 bytes a parameter, about 1 GiB).
        for _ in range(2):
            self.probe.zero_grad(set_to_none=True)
            with autocast(device, self.amp_dtype):
                _, loss = self.probe(ids, ids, return_logits=self.logits)
            loss.backward()
            optimizer.step()
            del loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del reserve, optimizer
        return True

    def close(self) -> None:
        self.probe = None
        _release(self.device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def choose(
    cfg,
    model: nn.Module,
    *,
    device: torch.device,
    world_size: int = 1,
    amp_dtype: torch.dtype | None = None,
    fits: Callable[[int], bool] | None = None,
) -> int:
    """The micro-batch `auto` means for this run on this rank (see the module docstring).
    `fits` replaces the CUDA trial (tests inject one)."""
    per_rank, rest = divmod(cfg.total_batch_tokens, cfg.seq_len * world_size)
    if rest or per_rank < 1:
        raise ValueError(
            f"--total-batch-tokens {cfg.total_batch_tokens} is not a whole number of sequences "
            f"per rank: seq-len x world size = {cfg.seq_len} x {world_size}"
        )
    sizes = candidates(per_rank)
    if fits is None and device.type != "cuda":
        return max(b for b in sizes if b * cfg.seq_len <= HOST_AUTO_TOKENS or b == 1)
    trial = None
    if fits is None:
        params = [p for p in model.parameters() if p.requires_grad]
        ddp = world_size > 1 and getattr(cfg, "parallel", "ddp") == "ddp"
        reserve = sum(p.numel() * p.element_size() for p in params) if ddp else 0
        fits = trial = TrialStep(
            model,
            seq_len=cfg.seq_len,
            device=device,
            amp_dtype=amp_dtype,
            reserve_bytes=reserve,
            logits=bool(getattr(cfg, "compile", False)),
        )
    try:
        best = largest_fitting(sizes, fits)
    finally:
        if trial is not None:
            trial.close()
    if best is None:
        raise RuntimeError(
            f"--micro-batch-size auto: not even 1 sequence of {cfg.seq_len} tokens trains on "
            f"{device} (out of memory); use a smaller model or --seq-len"
        )
    return best


def resolve(cfg, model: nn.Module, info, amp_dtype: torch.dtype | None = None, **kw):
    """`cfg` with `micro_batch_size` an integer: unchanged unless it is `auto`. All ranks agree."""
    if cfg.micro_batch_size != AUTO:
        return cfg
    best = choose(
        cfg, model, device=info.device, world_size=info.world_size, amp_dtype=amp_dtype, **kw
    )
    best = _min_across_ranks(best, info.device)
    log.info(
        "--micro-batch-size auto: %d sequences of %d tokens (gradient accumulation %d)",
        best,
        cfg.seq_len,
        cfg.total_batch_tokens // (best * cfg.seq_len * info.world_size),
    )
    return dataclasses.replace(cfg, micro_batch_size=best)


def _min_across_ranks(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
