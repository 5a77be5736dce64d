"""Training configuration: one dataclass, recipes as YAML data, every field overridable from the CLI.

Each field carries its flag's help and choices (`gpt124m.flags.option`), and the CLI flags are
generated from the fields (`--micro-batch-size` for `micro_batch_size`), so the flags, the
recipes and the library cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import logging
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpt124m.flags import (
    PRECISIONS,
    TORCHRUN_DEVICE_HELP,
    add_arguments,
    fits,
    given,
    option,
    type_name,
)

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "wsd", "constant")
PARALLEL = ("ddp", "fsdp")
AUTO = "auto"
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. Defaults describe a small CPU-friendly run."""

    # model and data
    model: str = option(
        "nano",
        "a preset name (see `gpt124m info`), or a model directory to continue from",
    )
    data_dir: str = option("data/builtin", "folder of token shards written by `gpt124m prepare`")
    out_dir: str = option("runs/train", "where metrics, curves, checkpoints and the final model go")
    seq_len: int = option(256, "tokens per sequence (T)")
    micro_batch_size: int | str = option(
        8,
        (
            "sequences per rank and forward pass (B), or auto: the largest that divides the step's "
            "sequences and trains without running out of CUDA memory (found by trial steps; on "
            "CPU/MPS the largest of at most 8,192 tokens). Tokens per step stay "
            "--total-batch-tokens either way"
        ),
    )
    total_batch_tokens: int = option(
        8 * 256,
        (
            "tokens per optimizer step over all ranks and micro-steps; gradient accumulation = this"
            " / (B x T x world size)"
        ),
    )
    max_steps: int = option(100, "optimizer steps in the run")
    seed: int = option(
        1337, "seeds the model init, the data order, dropout (per rank) and the samples"
    )
    dropout: float = option(0.0, "dropout probability in the model")

    # optimizer and schedule
    optimizer: str = option(
        "adamw",
        (
            "adamw, or muon: Muon (torch.optim.Muon) on the 2-D weights inside the blocks, AdamW "
            "(--max-lr, --weight-decay, betas) on embeddings, LayerNorms and biases"
        ),
        choices=OPTIMIZERS,
    )
    max_lr: float = option(6e-4, "peak learning rate, reached after the warmup")
    min_lr: float = option(
        6e-5,
        "learning rate at the end of the decay: a number, not a share of --max-lr (which leaves "
        "it as it is)",
    )
    warmup_steps: int = option(10, "steps of linear warmup from 0 to --max-lr")
    schedule: str = option(
        "cosine", "after warmup: cosine | wsd (warmup-stable-decay) | constant", choices=SCHEDULES
    )
    decay_fraction: float = option(0.2, "wsd: share of the steps spent decaying at the end")
    weight_decay: float = option(
        0.1,
        "AdamW decoupled weight decay, on tensors with >= 2 dimensions only",
    )
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (inf: never clip)")
    muon_lr: float = option(
        0.02,
        (
            "--optimizer muon: peak LR of the Muon matrices; the schedule scales it like --max-lr "
            "(warmup, then decay to muon_lr x min_lr / max_lr)"
        ),
    )
    muon_momentum: float = option(0.95, "--optimizer muon: Muon's (Nesterov) momentum")
    muon_weight_decay: float = option(
        0.0,
        (
            "--optimizer muon: decoupled weight decay of the Muon matrices (per step they shrink by"
            " LR x this)"
        ),
    )

    # execution
    device: str = option("auto", TORCHRUN_DEVICE_HELP)
    precision: str = option(
        "auto",
        (
            "auto (bf16 where the device runs it natively, else fp32), fp32, bf16 or fp16 (with a "
            "gradient scaler)"
        ),
        choices=PRECISIONS,
    )
    compile: bool = option(
        False,
        "run the training step through torch.compile (eval and sampling stay eager)",
    )
    parallel: str = option(
        "ddp",
        "under torchrun: ddp, or fsdp (FSDP2 fully_shard) for models that do not fit one device",
        choices=PARALLEL,
    )

    # periodic work (0 disables)
    log_every: int = option(1, "a console line and a metrics.jsonl record every N steps")
    eval_every: int = option(250, "validation loss every N steps (0: never)")
    val_tokens: int = option(
        16_384,
        (
            "tokens of the validation shard per evaluation, over all ranks, in whole sequences "
            "(the same ones whatever the micro-batch)"
        ),
    )
    sample_every: int = option(1000, "text samples from --sample-prompts every N steps (0: never)")
    sample_prompts: list[str] = option(
        default_factory=lambda: ["Hello, I'm a language model,", "The meaning of life is"],
        help="prompts for the periodic samples",
    )
    sample_max_new_tokens: int = option(32, "tokens generated per sample")
    hellaswag_every: int = option(0, "HellaSwag accuracy every N steps (0: never)")
    hellaswag_limit: int | None = option(
        None,
        "score only the first N HellaSwag items (default: all 10,042)",
    )
    hellaswag_data: str | None = option(
        None,
        "a local HellaSwag validation file (default: Rowan/hellaswag from the Hub)",
    )
    checkpoint_every: int = option(1000, "a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep")
    resume: str = option(
        "none",
        "none, auto (the newest good checkpoint in --out-dir) or a checkpoint directory",
    )

    # reporting
    tensorboard: bool = option(False, "also write TensorBoard scalars to OUT_DIR/tensorboard")
    wandb_project: str | None = option(None, "also log to this Weights & Biases project")
    peak_flops: float | None = option(
        None,
        (
            "peak FLOP/s per device for MFU (default: the known GPU's, or a measured matmul peak on"
            " CPU)"
        ),
    )
    power_watts: float | None = option(
        None,
        "power per device for the energy estimate (default: by device type)",
    )
    grid_gco2_per_kwh: float = option(288.0, "grid carbon intensity for the CO2 estimate")

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")

        for name in ("seq_len", "total_batch_tokens", "max_steps"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        if self.micro_batch_size == AUTO:
            if self.total_batch_tokens % self.seq_len:
                raise bad(
                    "total_batch_tokens",
                    f"must be a multiple of --seq-len {self.seq_len} for --micro-batch-size auto",
                )
        elif not isinstance(self.micro_batch_size, int) or self.micro_batch_size <= 0:
            raise bad("micro_batch_size", f"must be a positive integer or {AUTO}")
        for name in (
            "warmup_steps",
            "log_every",
            "eval_every",
            "sample_every",
            "checkpoint_every",
            "hellaswag_every",
        ):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        # What the periodic work reads is checked now, not at its first turn, steps later
        if self.eval_every and self.val_tokens < 1:
            raise bad("val_tokens", "must be >= 1")
        if self.sample_every and self.sample_max_new_tokens < 1:
            raise bad("sample_max_new_tokens", "must be >= 1")
        if self.sample_every and not all(p.strip() for p in self.sample_prompts):
            raise bad("sample_prompts", "each prompt needs some text")
        if self.hellaswag_every and self.hellaswag_limit is not None and self.hellaswag_limit < 1:
            raise bad("hellaswag_limit", "must be >= 1")
        if not 0 <= self.seed < 2**63:
            raise bad("seed", "must be in [0, 2**63)")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "must be >= 1")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose from {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"choose from {', '.join(SCHEDULES)}")
        if self.parallel not in PARALLEL:
            raise bad("parallel", f"choose from {', '.join(PARALLEL)}")
        if not 0 < self.max_lr < math.inf:
            raise bad("max_lr", "must be positive")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if not 0 < self.eps < math.inf:
            raise bad("eps", "must be positive")
        if not 0 <= self.weight_decay < math.inf:
            raise bad("weight_decay", "must be >= 0")
        if not 0 <= self.min_lr <= self.max_lr:
            raise bad("min_lr", f"must be between 0 and --max-lr ({self.max_lr})")
        if not 0 < self.decay_fraction <= 1:
            raise bad("decay_fraction", "must be in (0, 1]")
        if not self.grad_clip > 0:
            raise bad("grad_clip", "must be positive (inf never clips)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose from {', '.join(OPTIMIZERS)}")
        local = None if self.hellaswag_data is None else Path(self.hellaswag_data).expanduser()
        if self.hellaswag_every and local is not None and not local.is_file():
            raise bad("hellaswag_data", "no such file")
        if self.peak_flops is not None and not 0 < self.peak_flops < math.inf:
            raise bad("peak_flops", "must be positive (leave it out for the device's own)")
        for name in ("power_watts", "grid_gco2_per_kwh"):  # 0 is allowed: no estimate
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:
                raise bad(name, "must be a finite number >= 0")
        if self.optimizer == "muon":
            if not self.muon_lr > 0:
                raise bad("muon_lr", "must be positive")
            if not 0 <= self.muon_momentum < 1:
                raise bad("muon_momentum", "must be in [0, 1)")
            if self.muon_weight_decay < 0:
                raise bad("muon_weight_decay", "must be >= 0")
            if self.parallel == "fsdp":
                raise bad(
                    "optimizer",
                    "Muon orthogonalises whole matrices and FSDP2 shards them; use "
                    "--parallel ddp, or --optimizer adamw under FSDP",
                )
            import torch  # last: the other checks answer without its 3 s import

            if not hasattr(torch.optim, "Muon"):
                raise bad(
                    "optimizer",
                    f"needs torch.optim.Muon, new in torch 2.9 (this is torch {torch.__version__}):"
                    " upgrade torch, or use --optimizer adamw",
                )

    def grad_accum_steps(self, world_size: int) -> int:
        if self.micro_batch_size == AUTO:
            raise ValueError(
                "--micro-batch-size auto must be resolved (gpt124m.train.autobatch) before the "
                "batches are built"
            )
        per_micro = self.micro_batch_size * self.seq_len * world_size
        if self.total_batch_tokens % per_micro:
            raise ValueError(
                f"--total-batch-tokens {self.total_batch_tokens} is not divisible by micro-batch "
                f"x seq-len x world size = {self.micro_batch_size} x {self.seq_len} x {world_size} "
                f"= {per_micro}"
            )
        return self.total_batch_tokens // per_micro

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_STEPS_ENV = "GPT124M_MAX_STEPS"


def apply_step_cap(cfg):
    """`cfg`, stopped after at most $GPT124M_MAX_STEPS optimizer steps when that is set: a smoke
    test of a script or of README's commands at full size but a few steps (tests/test_readme.py).
    The schedule then spans the capped run, so the result is only a smoke test's."""
    value = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not value:
        return cfg
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ValueError(f"{MAX_STEPS_ENV}={value!r}: must be a positive number of steps")
    if cfg.max_steps <= cap:
        return cfg
    log.warning("%s=%d: stopping after %d of the %d steps", MAX_STEPS_ENV, cap, cap, cfg.max_steps)
    return dataclasses.replace(cfg, max_steps=cap)


RECIPE_DIR = "recipes"
RECIPE_PACKAGE = "gpt124m.train"


def recipe_names(package: str = RECIPE_PACKAGE) -> list[str]:
    folder = importlib.resources.files(package) / RECIPE_DIR
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_recipe(
    name_or_path: str,
    config_cls=TrainConfig,
    *,
    package: str = RECIPE_PACKAGE,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Field overrides from a recipe bundled in `package` or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"--config {name_or_path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--config {name_or_path}: not UTF-8 text ({e})") from None
    else:
        resource = importlib.resources.files(package) / RECIPE_DIR / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ValueError(
                f"--config {name_or_path!r}: unknown recipe; choose from "
                f"{', '.join(recipe_names(package))} or give a .yaml path"
            )
        text = resource.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"--config {name_or_path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {name_or_path}: a recipe must be a mapping of field: value")
    data.pop("description", None)
    known = {f.name for f in dataclasses.fields(config_cls)} - set(exclude)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {name_or_path}: unknown fields {', '.join(unknown)}")
    hints = typing.get_type_hints(config_cls)
    for name, value in data.items():
        if not fits(value, hints[name]):
            raise ValueError(
                f"--config {name_or_path}: {name} is {value!r}, not {type_name(hints[name])}"
            )
    return data


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls=TrainConfig, *, exclude: tuple[str, ...] = ()
) -> None:
    """One `--flag` per dataclass field; unset flags stay None so recipes keep their values."""
    add_arguments(parser, config_cls, exclude=exclude)


def config_from_args(
    args: argparse.Namespace,
    config_cls=TrainConfig,
    recipe: str | None = None,
    *,
    package: str = RECIPE_PACKAGE,
    exclude: tuple[str, ...] = (),
):
    """Dataclass defaults, then the recipe, then explicit CLI flags."""
    values: dict[str, Any] = (
        load_recipe(recipe, config_cls, package=package, exclude=exclude) if recipe else {}
    )
    values.update(given(args, config_cls, exclude=exclude))
    config = config_cls(**values)
    config.validate()
    return config
