"""Training configuration: one dataclass, recipes as YAML data, every field overridable from the CLI.

The CLI flags are generated from the dataclass fields (`--micro-batch-size` for `micro_batch_size`),
so the flags, the recipes and the library cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "wsd", "constant")
PARALLEL = ("ddp", "fsdp")
AUTO = "auto"
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. Defaults describe a small CPU-friendly run."""

    # model and data
    model: str = "nano"
    data_dir: str = "data/builtin"
    out_dir: str = "runs/train"
    seq_len: int = 256
    micro_batch_size: int | str = 8
    total_batch_tokens: int = 8 * 256
    max_steps: int = 100
    seed: int = 1337
    dropout: float = 0.0

    # optimizer and schedule
    optimizer: str = "adamw"
    max_lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 10
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0

    # execution
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    parallel: str = "ddp"

    # periodic work (0 disables)
    log_every: int = 1
    eval_every: int = 250
    val_tokens: int = 16_384
    sample_every: int = 1000
    sample_prompts: list[str] = field(
        default_factory=lambda: ["Hello, I'm a language model,", "The meaning of life is"]
    )
    sample_max_new_tokens: int = 32
    hellaswag_every: int = 0
    hellaswag_limit: int | None = None
    hellaswag_data: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    resume: str = "none"

    # reporting
    tensorboard: bool = False
    wandb_project: str | None = None
    peak_flops: float | None = None
    power_watts: float | None = None
    grid_gco2_per_kwh: float = 288.0

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "model": "a preset name (see `gpt124m info`), or a model directory to continue from",
        "data_dir": "folder of token shards written by `gpt124m prepare`",
        "out_dir": "where metrics, curves, checkpoints and the final model go",
        "seq_len": "tokens per sequence (T)",
        "micro_batch_size": "sequences per rank and forward pass (B), or auto: the largest that "
        "divides the step's sequences and trains without running out of CUDA memory (found by "
        "trial steps; on CPU/MPS the largest of at most 8,192 tokens). Tokens per step stay "
        "--total-batch-tokens either way",
        "total_batch_tokens": "tokens per optimizer step over all ranks and micro-steps; "
        "gradient accumulation = this / (B x T x world size)",
        "max_steps": "optimizer steps in the run",
        "seed": "seeds the model init, the data order and the samples",
        "dropout": "dropout probability in the model",
        "optimizer": "adamw, or muon: Muon (torch.optim.Muon) on the 2-D weights inside the "
        "blocks, AdamW (--max-lr, --weight-decay, betas) on embeddings, LayerNorms and biases",
        "max_lr": "peak learning rate, reached after the warmup",
        "min_lr": "learning rate at the end of the decay",
        "warmup_steps": "steps of linear warmup from 0 to --max-lr",
        "schedule": "after warmup: cosine | wsd (warmup-stable-decay) | constant",
        "decay_fraction": "wsd: share of the steps spent decaying at the end",
        "weight_decay": "AdamW decoupled weight decay, on tensors with >= 2 dimensions only",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "eps": "AdamW epsilon",
        "grad_clip": "clip the global gradient norm to this (inf: never clip)",
        "muon_lr": "--optimizer muon: peak LR of the Muon matrices; the schedule scales it like "
        "--max-lr (warmup, then decay to muon_lr x min_lr / max_lr)",
        "muon_momentum": "--optimizer muon: Muon's (Nesterov) momentum",
        "muon_weight_decay": "--optimizer muon: decoupled weight decay of the Muon matrices "
        "(per step they shrink by LR x this)",
        "device": "auto, cpu, cuda or mps; under torchrun each rank takes cuda:LOCAL_RANK",
        "precision": "auto (bf16 where the device runs it natively, else fp32), fp32, bf16 or "
        "fp16 (with a gradient scaler)",
        "compile": "run the training step through torch.compile (eval and sampling stay eager)",
        "parallel": "under torchrun: ddp, or fsdp (FSDP2 fully_shard) for models that do not "
        "fit one device",
        "log_every": "a console line and a metrics.jsonl record every N steps",
        "eval_every": "validation loss every N steps (0: never)",
        "val_tokens": "tokens of the validation shard per evaluation, over all ranks",
        "sample_every": "text samples from --sample-prompts every N steps (0: never)",
        "sample_prompts": "prompts for the periodic samples",
        "sample_max_new_tokens": "tokens generated per sample",
        "hellaswag_every": "HellaSwag accuracy every N steps (0: never)",
        "hellaswag_limit": "score only the first N HellaSwag items (default: all 10,042)",
        "hellaswag_data": "a local HellaSwag validation file (default: Rowan/hellaswag from the Hub)",
        "checkpoint_every": "a checkpoint every N steps (0: only at the end)",
        "keep_checkpoints": "how many of the newest checkpoints to keep",
        "resume": "none, auto (the newest good checkpoint in --out-dir) or a checkpoint directory",
        "tensorboard": "also write TensorBoard scalars to OUT_DIR/tensorboard",
        "wandb_project": "also log to this Weights & Biases project",
        "peak_flops": "peak FLOP/s per device for MFU (default: the known GPU's, or a measured "
        "matmul peak on CPU)",
        "power_watts": "power per device for the energy estimate (default: by device type)",
        "grid_gco2_per_kwh": "grid carbon intensity for the CO2 estimate",
    }

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
        for name in ("warmup_steps", "log_every", "eval_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "must be >= 1")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose from {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"choose from {', '.join(SCHEDULES)}")
        if self.parallel not in PARALLEL:
            raise bad("parallel", f"choose from {', '.join(PARALLEL)}")
        if not self.max_lr > 0:
            raise bad("max_lr", "must be positive")
        if not 0 <= self.min_lr <= self.max_lr:
            raise bad("min_lr", f"must be between 0 and --max-lr ({self.max_lr})")
        if not 0 < self.decay_fraction <= 1:
            raise bad("decay_fraction", "must be in (0, 1]")
        if not self.grad_clip > 0:
            raise bad("grad_clip", "must be positive (inf never clips)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose from {', '.join(OPTIMIZERS)}")
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
        text = path.read_text()
    else:
        resource = importlib.resources.files(package) / RECIPE_DIR / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ValueError(
                f"--config {name_or_path!r}: unknown recipe; choose from "
                f"{', '.join(recipe_names(package))} or give a .yaml path"
            )
        text = resource.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {name_or_path}: a recipe must be a mapping of field: value")
    data.pop("description", None)
    known = {f.name for f in dataclasses.fields(config_cls)} - set(exclude)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {name_or_path}: unknown fields {', '.join(unknown)}")
    return data


def _int_or_word(text: str) -> int | str:
    """A flag that takes a number or a word (`--micro-batch-size auto`); validate() checks it."""
    try:
        return int(text)
    except ValueError:
        return text


def _flag_type(tp: Any):
    """The argparse `type` for a dataclass field annotation (Optional unwrapped)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if {int, str} <= set(args):
            return _int_or_word
        return _flag_type(args[0])
    return tp


def flag_help(config_cls) -> dict[str, str]:
    """Each field's help text; a subclass's `FLAG_HELP` overrides its parents'."""
    helps: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        helps.update(vars(klass).get("FLAG_HELP", {}))
    return helps


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls=TrainConfig, *, exclude: tuple[str, ...] = ()
) -> None:
    """One `--flag` per dataclass field; unset flags stay None so recipes keep their values."""
    hints = typing.get_type_hints(config_cls)
    helps = flag_help(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _flag_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = helps[f.name]
        if "default:" not in help_text:
            help_text += f" (default: {default!r})"
        if tp is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=None, help=help_text)


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
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in exclude:
            values[f.name] = value
    config = config_cls(**values)
    config.validate()
    return config
