"""One optimizer step and nothing else: schedule, forward and backward over the micro-batches with
token-weighted accumulation, clipping and the update; and the check of the steps' statistics.

Two model handles, named for their use: `module` is the model whose weights are saved, clipped,
evaluated and sampled (under FSDP2 the sharded module itself); `stepping` is what runs forward and
backward: `module` wrapped for DDP and/or compiled, or `module` itself.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Protocol

import torch
from torch import nn

from gpt124m.collectives import all_reduce_sum, mean_across_ranks
from gpt124m.device import autocast, to_device
from gpt124m.model import IGNORE_INDEX
from gpt124m.train.optim import set_lr
from gpt124m.train.schedule import lr_at


class BatchSource(Protocol):
    """What the loop needs from training data: batches, and a position it can save and restore."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingDiverged(RuntimeError):
    pass


class Stepper:
    """Runs optimizer steps and keeps their statistics on the device until `settle()`."""

    def __init__(self, cfg, module: nn.Module, stepping: nn.Module, optimizer, scaler, data,
                 *, device: torch.device, amp_dtype: torch.dtype, world_size: int):  # fmt: skip
        self.cfg, self.module, self.stepping = cfg, module, stepping
        self.optimizer, self.scaler, self.data = optimizer, scaler, data
        self.device, self.amp_dtype, self.world_size = device, amp_dtype, world_size
        self.accum = cfg.grad_accum_steps(world_size)
        self.step = 0
        self.tokens_seen = 0
        self.earlier_seconds = 0.0  # training time of the sessions before a resume
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []

    def run(self) -> None:
        cfg = self.cfg
        lr = lr_at(
            self.step,
            max_lr=cfg.max_lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            schedule=cfg.schedule,
            decay_fraction=cfg.decay_fraction,
        )
        set_lr(self.optimizer, lr)
        self.stepping.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        batches = [self.data.next_batch() for _ in range(self.accum)]
        batches = [(to_device(x, self.device), to_device(y, self.device)) for x, y in batches]
        weights = self._micro_batch_weights([y for _, y in batches])
        for micro, (x, y) in enumerate(batches):
            sync = micro == self.accum - 1
            with self._no_sync(sync), autocast(self.device, self.amp_dtype):
                _, loss = self.stepping(x, y, return_logits=False)
                # A micro-batch with no targets has a nan mean (0/0) and weight 0: it counts
                # for nothing, and its zero gradient is what backward gets.
                loss = torch.where(weights[micro] > 0, loss * weights[micro], 0.0)
            loss_sum += loss.detach()
            self.scaler.scale(loss).backward()
        loss = mean_across_ranks(loss_sum)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.tokens_seen += cfg.total_batch_tokens
        # Device tensors: reading them waits for the GPU, so that happens only in settle().
        self.pending.append((self.step, lr, loss.detach(), grad_norm.detach()))

    def settle(self, ckpt_root) -> dict[str, float]:
        """Wait for the device, read the steps run since the last call and check them; returns
        the last step's loss, lr and gradient norm. The only per-step host sync, so the loop calls
        it only when a step is logged, before periodic work, and every few dozen steps.

        A non-finite step stops the run before anything is evaluated or saved, so the newest
        checkpoint on disk is still a good one."""
        steps = self.pending
        self.pending = []
        values = torch.stack([torch.stack([v, n.float()]) for _, _, v, n in steps]).tolist()
        for (step, _, _, _), (loss, norm) in zip(steps, values, strict=True):
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss ({loss}) at step {step}; stopping. "
                    f"The last good checkpoint in {ckpt_root} is intact: lower --max-lr or "
                    "check the data, then --resume auto"
                )
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(f"non-finite gradient norm at step {step}; stopping")
        return {"loss": values[-1][0], "lr": steps[-1][1], "grad_norm": values[-1][1]}

    def _micro_batch_weights(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """Weights that turn per-micro-batch mean losses into the mean over every target token of
        the step, on all ranks. Without them a micro-batch with few unmasked targets (a short SFT
        answer) would count as much as a full one. Equal to 1/accum when nothing is masked."""
        counts = torch.stack([(y != IGNORE_INDEX).sum() for y in targets]).float()
        total = all_reduce_sum(counts.sum()).clamp(min=1)
        # DDP and FSDP average gradients over ranks, hence the world size.
        return counts * self.world_size / total

    def _no_sync(self, sync: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch."""
        if sync or not hasattr(self.stepping, "no_sync"):
            return contextlib.nullcontext()
        return self.stepping.no_sync()
