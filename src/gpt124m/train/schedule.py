"""Learning-rate schedules: linear warmup, then cosine / warmup-stable-decay / constant."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """LR for optimizer step `step` (0-based).

    Warmup reaches max_lr at step warmup_steps - 1, i.e. the first step already trains
    (lr = max_lr / warmup_steps); the decay ends at min_lr on the last step.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return max_lr
    last = max(max_steps - 1, warmup_steps)
    if schedule == "cosine":
        span = last - warmup_steps
        progress = 1.0 if span == 0 else (step - warmup_steps) / span
        progress = min(max(progress, 0.0), 1.0)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * (max_steps - warmup_steps)))
        decay_start = last - decay_steps
        if step <= decay_start:
            return max_lr
        progress = min((step - decay_start) / decay_steps, 1.0)
        return max_lr - progress * (max_lr - min_lr)
    raise ValueError(f"unknown schedule {schedule!r}")
