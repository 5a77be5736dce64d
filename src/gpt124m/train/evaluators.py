"""The periodic work of a run besides stepping: validation loss, HellaSwag and samples, each with
its own `every`. A recipe describes what to evaluate as `Hooks`; the loop turns them into
evaluators and records what each returns.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass
class Hooks:
    """What a recipe evaluates; each part optional.

    A `hellaswag` hook may also have `prepare(rank=...)`, called once before training starts.
    """

    val_batches: Callable[[], Batches] | None = None
    samples: Callable[[nn.Module], list[str]] | None = None
    hellaswag: Callable[..., dict | None] | None = None


@dataclasses.dataclass
class Context:
    """What an evaluator may use of the run."""

    device: torch.device
    amp: torch.dtype | None  # None: fp32
    rank: int
    world_size: int
    is_main: bool
    step: int = 0


def due(every: int, step: int, max_steps: int) -> bool:
    """Whether work done every `every` steps (0: never) runs after `step`: on its multiples, and
    after the last step so that a run always ends with it."""
    return every > 0 and (step % every == 0 or step == max_steps)


class Periodic:
    kind = ""

    def __init__(self, every: int):
        self.every = every

    def due(self, step: int, max_steps: int) -> bool:
        return due(self.every, step, max_steps)

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, Any] | None:
        raise NotImplementedError


class ValidationLoss(Periodic):
    kind = "val"

    def __init__(self, every: int, batches: Callable[[], Batches]):
        super().__init__(every)
        self.batches = batches

    def __call__(self, model, ctx):
        from gpt124m.eval.loss import evaluate_loss

        result = evaluate_loss(model, self.batches(), device=ctx.device, autocast_dtype=ctx.amp)
        log.info("step %d | val loss %.4f", ctx.step, result["loss"])
        return {"loss": result["loss"]}


class HellaSwag(Periodic):
    kind = "hellaswag"

    def __init__(self, every: int, hook: Callable[..., dict | None]):
        super().__init__(every)
        self.hook = hook

    def prepare(self, rank: int) -> None:
        # Download and check the items now: bad data should stop the run before step 1,
        # not at the first evaluation hours later.
        prepare = getattr(self.hook, "prepare", None)
        if self.every and prepare is not None:
            prepare(rank=rank)

    def __call__(self, model, ctx):
        result = self.hook(
            model, device=ctx.device, autocast_dtype=ctx.amp, rank=ctx.rank,
            world_size=ctx.world_size,
        )  # fmt: skip
        if not result:
            return None
        log.info(
            "step %d | HellaSwag acc_norm %.4f (n=%d)", ctx.step, result["acc_norm"], result["n"]
        )
        return {"acc_norm": result["acc_norm"], "acc": result["acc"], "n": result["n"]}


class Samples(Periodic):
    kind = "samples"

    def __init__(self, every: int, sample: Callable[[nn.Module], list[str]]):
        super().__init__(every)
        self.sample = sample

    def __call__(self, model, ctx):
        texts = self.sample(model)
        if not ctx.is_main:
            return None
        for text in texts:
            log.info("sample | %s", text.replace("\n", "\\n"))
        return {"texts": texts}


def build_evaluators(hooks: Hooks, cfg) -> list[Periodic]:
    """The evaluators `hooks` and the config's `*_every` settings ask for, in the order they run."""
    found: list[Periodic] = []
    if hooks.val_batches is not None:
        found.append(ValidationLoss(cfg.eval_every, hooks.val_batches))
    if hooks.hellaswag is not None:
        found.append(HellaSwag(cfg.hellaswag_every, hooks.hellaswag))
    if hooks.samples is not None:
        found.append(Samples(cfg.sample_every, hooks.samples))
    return found


def hellaswag_hook(cfg):
    """The periodic HellaSwag evaluation `--hellaswag-every` asks for, or None."""
    if not cfg.hellaswag_every:
        return None
    try:
        from gpt124m.eval.hellaswag import HellaSwagHook
    except ImportError:
        log.warning("HellaSwag evaluation is not available in this install; skipping it")
        return None
    return HellaSwagHook(cfg.hellaswag_data, limit=cfg.hellaswag_limit)


def sample_texts(model: nn.Module, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """Samples for the log: fixed prompts, fixed seed, so runs are comparable."""
    from gpt124m.generate import GenerationConfig, generate_text
    from gpt124m.tokenizer import get_tokenizer

    budget = min(max_new_tokens, model.config.block_size // 2)
    cfg = GenerationConfig(max_new_tokens=budget, do_sample=True, top_k=50, seed=seed)
    tok = get_tokenizer()
    return [p + t for p, t in zip(prompts, generate_text(model, tok, prompts, cfg), strict=True)]
