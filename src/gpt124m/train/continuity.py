"""What a resumed run may change: a resume continues the run its checkpoint began, so the
settings that define that run must be the same, and those that only steer it from here on may
change, but not silently.

The checkpoint's `training` record (the config it was written under) is the reference. Keys the
record lacks (an older checkpoint) are not checked. The model's shape, the optimizer kind, the
world size, the sequence length and the data are checked where they are restored.
"""

from __future__ import annotations

import logging
from typing import Any

from gpt124m.flags import flag_name
from gpt124m.train.config import MAX_STEPS_ENV

log = logging.getLogger(__name__)

# A change here makes a different run: other batches, other noise, another adapter scale. SFT's
# keys are listed by name (its config extends TrainConfig); the batch size comes before the token
# count it sets, so an SFT refusal names the flag the user gave.
DEFINING = (
    "batch_size",
    "total_batch_tokens",
    "dropout",
    "method",
    "template",
    "val_fraction",
    "split_seed",
    "pad_to",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)
# A change here is a decision about the rest of the run (a longer schedule, a lower rate).
STEERING = (
    "max_steps",
    "epochs",
    "max_lr",
    "min_lr",
    "warmup_steps",
    "warmup_fraction",
    "schedule",
    "decay_fraction",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "muon_lr",
    "muon_momentum",
    "muon_weight_decay",
    "precision",
)


def check(settings: dict[str, Any], recorded: dict[str, Any], step: int, where: str) -> list[str]:
    """Raise ValueError (one line) if `settings` would not continue the run `recorded` describes
    at `step`; return the steering changes ("--max-lr 0.0006 -> 0.0003"), to be logged."""
    if recorded and ("method" in recorded) != ("method" in settings):  # only SFT has a method
        kind, command = ("an SFT", "sft") if "method" in recorded else ("a pretraining", "train")
        raise ValueError(f"{where} is {kind} checkpoint: resume it with `gpt124m {command}`")
    for key in _defining(settings):
        if key in recorded and recorded[key] != settings[key]:
            raise ValueError(
                f"{where} was trained with {flag_name(key)} {recorded[key]}, not "
                f"{settings[key]}: a resumed run keeps the settings that define it (use another "
                "--out-dir to start a new run)"
            )
    max_steps = settings.get("max_steps")
    if isinstance(max_steps, int) and max_steps < step:
        raise ValueError(
            f"this run ends at step {max_steps} (--max-steps, ${MAX_STEPS_ENV}, or sft's "
            f"--epochs), and {where} is already at step {step}: resume from an earlier "
            "checkpoint with --resume PATH"
        )
    return [
        f"{flag_name(key)} {recorded[key]} -> {settings[key]}"
        for key in STEERING
        if key in recorded and key in settings and recorded[key] != settings[key]
    ]


def _defining(settings: dict[str, Any]) -> list[str]:
    """DEFINING, as far as `settings` has and uses it: an SFT run's token count follows from its
    batch size and padding (its own flags), and a full fine-tune has no LoRA settings."""
    keys = [k for k in DEFINING if k in settings]
    if "method" in settings:
        keys.remove("total_batch_tokens")
        if settings["method"] != "lora":
            keys = [k for k in keys if not k.startswith("lora_")]
    return keys


def log_changes(changes: list[str], where: str) -> None:
    if changes:
        log.warning("resuming %s with changed settings: %s", where, ", ".join(changes))
