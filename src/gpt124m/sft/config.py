"""`SFTConfig`: the pretraining `TrainConfig` plus what instruction tuning adds.

Fields that depend on the data or the model are `None` until `sft.runner` resolves them:
`seq_len` (the block size), `micro_batch_size`, `max_steps` (from `epochs`) and `warmup_steps`
(from `warmup_fraction`). `max_lr` and `weight_decay` default by method: the seed's full
fine-tuning used lr 5e-5 and weight decay 0.1; LoRA defaults to lr 3e-4 and no weight decay
(the adapters are small and start at zero, so they need a larger step and no pull toward zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt124m.flags import option
from gpt124m.sft.template import TEMPLATES
from gpt124m.train import config as train_config
from gpt124m.train.config import (
    AUTO,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    load_recipe,
)

log = logging.getLogger(__name__)

METHODS = ("full", "lora")
PAD_TO = ("block", "longest")
ALPACA_HUB_ID = "tatsu-lab/alpaca"
METHOD_DEFAULTS = {
    "full": {"max_lr": 5e-5, "weight_decay": 0.1},
    "lora": {"max_lr": 3e-4, "weight_decay": 0.0},
}
# Pretraining fields with no meaning here: SFT reads `base` and `data`, and derives the batch
# size in tokens from `batch_size` (examples) and the padded length.
NOT_FLAGS = ("model", "data_dir", "total_batch_tokens")
DEFAULT_INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
]
RECIPE_PACKAGE = "gpt124m.sft"


@dataclass
class SFTConfig(TrainConfig):
    """An instruction-tuning run. Defaults reproduce the seed's full fine-tuning on Alpaca.

    `max_lr` and `weight_decay` left None take `method`'s defaults when the config is built, so
    `dataclasses.replace(cfg, method="lora")` keeps cfg's values: build a new config instead."""

    base: str = option(
        "",
        (
            "the model to tune: a model directory, GPT-2 directory, hub id, or a preset name "
            "(random init); required, here or in the --config recipe"
        ),
    )
    data: str = option(
        "alpaca",
        (
            "alpaca (tatsu-lab/alpaca from the Hub) or a local JSON, JSONL or parquet file "
            "of instruction/input/output records"
        ),
    )
    method: str = option("full", "full (every weight) or lora (adapters; peft)", choices=METHODS)
    template: str = option("seed", "prompt template", choices=TEMPLATES)
    val_fraction: float = option(0.1, "share of the examples held out for validation")
    split_seed: int = option(0, "seed of the train/validation split")
    pad_to: str = option(
        "block",
        "batch length: block (the block size) or longest (the longest example)",
        choices=PAD_TO,
    )
    epochs: float = option(
        3.0,
        "passes over the training examples (sets --max-steps when that is not given)",
    )
    batch_size: int = option(8, "examples per optimizer step, over all ranks and micro-steps")
    warmup_fraction: float = option(
        0.01,
        "warmup as a share of the steps, when --warmup-steps is not given",
    )

    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(8, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_targets: str = option(
        "default",
        (
            "default (c_attn, attn c_proj, c_fc, mlp c_proj), all-linear, or comma-separated module"
            " names"
        ),
    )
    merge: bool = option(True, "LoRA: also write a merged, standalone model")

    # inherited fields with SFT defaults (None: resolved from the model, the data or the method)
    model: str = ""
    data_dir: str = ""
    out_dir: str = option(
        "runs/sft", "where metrics, checkpoints and the tuned model go", aliases=("--out",)
    )
    seq_len: int | None = option(
        None,
        "block size; longer examples are dropped (default: the model's)",
    )
    micro_batch_size: int | str | None = option(
        None,
        (
            "examples per rank and forward pass (default: the whole batch), or auto: the largest "
            "that divides the batch and fits in CUDA memory (on CPU/MPS: of at most 8,192 tokens); "
            "the batch per step stays --batch-size either way"
        ),
    )
    max_steps: int | None = option(
        None,
        "optimizer steps (default: epochs x training examples / batch size)",
    )
    warmup_steps: int | None = option(
        None,
        "steps of linear warmup (default: from --warmup-fraction)",
    )
    max_lr: float | None = option(None, "peak learning rate (default: 5e-5 full, 3e-4 LoRA)")
    min_lr: float = 0.0
    weight_decay: float | None = option(
        None,
        "AdamW weight decay on >= 2-D tensors (default: 0.1 full, 0 LoRA)",
    )
    precision: str = "fp32"
    eval_every: int = 500
    val_tokens: int | None = option(
        None,
        (
            "tokens per evaluation over all ranks, counted padded to the block (default: 1,048,576,"
            " less on a short run: all evaluations together read at most a third as many tokens as "
            "training)"
        ),
    )
    sample_every: int = 1000
    sample_prompts: list[str] = option(
        default_factory=lambda: list(DEFAULT_INSTRUCTIONS),
        help="instructions answered in the periodic samples",
    )
    sample_max_new_tokens: int = 64
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        defaults = METHOD_DEFAULTS.get(self.method, METHOD_DEFAULTS["full"])
        if self.max_lr is None:
            self.max_lr = defaults["max_lr"]
        if self.weight_decay is None:
            self.weight_decay = defaults["weight_decay"]

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")

        if not self.base:
            raise ValueError("--base is required: a model directory, hub id or preset name")
        if not self.data:
            raise ValueError("--data is required: `alpaca` or a JSON, JSONL or parquet file")
        for name, choices in (("method", METHODS), ("template", TEMPLATES), ("pad_to", PAD_TO)):
            if getattr(self, name) not in choices:
                raise bad(name, f"choose from {', '.join(choices)}")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.split_seed < 0:
            raise bad("split_seed", "must be >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise bad("warmup_fraction", "must be in [0, 1)")
        if not 0 < self.epochs < math.inf:  # NaN too
            raise bad("epochs", "must be positive")
        for name in ("batch_size", "lora_r", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.method == "lora" and self.parallel == "fsdp":
            raise bad("parallel", "LoRA trains under DDP; FSDP is for full fine-tuning")
        if self.method == "full":
            unused = [
                f"--{f.name.replace('_', '-')}"
                for f in dataclasses.fields(self)
                if (f.name.startswith("lora_") or f.name == "merge")
                and getattr(self, f.name) != f.default
            ]
            if unused:
                log.warning("%s: LoRA settings, unused by --method full", ", ".join(unused))
        # The pretraining checks, with placeholders for what is resolved later.
        placeholders = {
            "seq_len": 1 if self.seq_len is None else self.seq_len,
            "micro_batch_size": 1
            if self.micro_batch_size in (None, AUTO)
            else self.micro_batch_size,
            "max_steps": 1 if self.max_steps is None else self.max_steps,
            "warmup_steps": 0 if self.warmup_steps is None else self.warmup_steps,
            "val_tokens": 1 if self.val_tokens is None else self.val_tokens,
        }
        TrainConfig.validate(dataclasses.replace(self, **placeholders))

    def to_dict(self) -> dict[str, Any]:
        """The run's settings for metadata; `dataset` and `base_model` feed the model card."""
        d = super().to_dict()
        for name in ("model", "data_dir"):
            d.pop(name)
        d["dataset"] = ALPACA_HUB_ID if self.data == "alpaca" else recorded_source(self.data)
        d["base_model"] = recorded_source(self.base)
        return d


def recorded_source(text: str) -> str:
    """`text` as run metadata records it: a relative local path that reads like a hub id
    (`runs/base`) as `./runs/base`, so that a model card never links it as a hub repo."""
    if Path(text).expanduser().exists() and not text.startswith((".", "/", "~")):
        return f"./{text}"
    return text


def add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SFTConfig field, except the pretraining-only ones (`NOT_FLAGS`)."""
    add_config_arguments(parser, SFTConfig, exclude=NOT_FLAGS)


def recipe_names() -> list[str]:
    return train_config.recipe_names(RECIPE_PACKAGE)


def load_sft_recipe(name_or_path: str) -> dict[str, Any]:
    """Field overrides from a bundled SFT recipe name or a YAML file path."""
    return load_recipe(name_or_path, SFTConfig, package=RECIPE_PACKAGE, exclude=NOT_FLAGS)


def sft_config_from_args(args: argparse.Namespace, recipe: str | None = None) -> SFTConfig:
    """Dataclass defaults, then the recipe, then explicit CLI flags."""
    return config_from_args(args, SFTConfig, recipe, package=RECIPE_PACKAGE, exclude=NOT_FLAGS)
