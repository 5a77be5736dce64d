"""What the demo runs, without Gradio: caps, input checks, generation settings and model facts.

Every check happens before the first token, so a bad request costs no compute and its message
reaches the user as it is written here. The caps keep prompt plus new tokens inside the model's
context, so generation itself can never fail on length.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt124m.generate import MIN_SCALE, GenerationConfig, stream_text
from gpt124m.model import GPT
from gpt124m.sft.template import TEMPLATES, format_prompt
from gpt124m.tokenizer import Tokenizer

DEFAULT_NEW_TOKENS_CAP = 256
MAX_SEED = 2**63 - 1


class DemoInputError(ValueError):
    """A request the demo refuses; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class Limits:
    """Caps on one request: prompt tokens and new tokens; together they fit the context."""

    max_input_tokens: int
    max_new_tokens: int

    @classmethod
    def for_context(
        cls,
        block_size: int,
        *,
        max_new_tokens: int | None = None,
        max_input_tokens: int | None = None,
    ) -> Limits:
        """Defaults: new tokens min(256, half the context); the prompt gets the rest."""
        new = (
            min(DEFAULT_NEW_TOKENS_CAP, block_size // 2)
            if max_new_tokens is None
            else max_new_tokens
        )
        # Each message names the flag at fault: the one given, or the one that left no room.
        if new < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {new}")
        if max_input_tokens is not None and max_input_tokens < 1:
            raise ValueError(f"--max-input-tokens must be >= 1, got {max_input_tokens}")
        prompt = block_size - new if max_input_tokens is None else max_input_tokens
        if prompt < 1:
            raise ValueError(
                f"--max-new-tokens {new} leaves no room for a prompt in the model's "
                f"{block_size}-token context; lower it"
            )
        if prompt + new > block_size:
            raise ValueError(
                f"--max-input-tokens {prompt} + --max-new-tokens {new} exceed the model's "
                f"context length ({block_size}); lower one of them"
            )
        return cls(max_input_tokens=prompt, max_new_tokens=new)


@dataclass(frozen=True)
class Sampling:
    """The controls of one request, as the UI sends them."""

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    seed: int | float | None = None


def display_name(source: str) -> str:
    """What the demo calls a model: a hub id as is; a run's final `model/` or a checkpoint by the
    run's name (`runs/quickstart/model` -> quickstart); any other directory by its own name."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return str(source)
    path = path.resolve()
    step = re.fullmatch(r"step_(\d+)", path.name)
    if step and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name} (step {int(step.group(1)):,})"
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.name


class DemoModel:
    """A loaded model, its tokenizer and the caps that apply to it."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        *,
        name: str = "model",
        limits: Limits | None = None,
        template: str = "seed",
        compiled: bool = False,
    ) -> None:
        self.model = model
        self.compiled = compiled  # `stream_text(compiled=...)`: the decode step compiled
        self.tokenizer = tokenizer
        self.name = name
        self.limits = limits or Limits.for_context(model.config.block_size)
        Limits.for_context(
            model.config.block_size,
            max_new_tokens=self.limits.max_new_tokens,
            max_input_tokens=self.limits.max_input_tokens,
        )
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose from: {', '.join(TEMPLATES)}")
        self.template = template

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        precision: str = "fp32",
        max_new_tokens: int | None = None,
        max_input_tokens: int | None = None,
        instruct: bool = False,
        template: str | None = None,
        compiled: bool = False,
    ) -> DemoModel:
        """Load a model directory or hub id as `gpt124m generate`/`chat` do.

        An instruct model uses `template`, else the one its directory records, as `gpt124m chat`
        does; the panel names it as `display_name` does, never by its full path.
        """
        from gpt124m.checkpoint import read_config
        from gpt124m.device import require_compiler, resolve_device, resolve_dtype
        from gpt124m.loading import load_model, resolve_source
        from gpt124m.sft.chat import trained_template
        from gpt124m.tokenizer import get_tokenizer

        model_dir = resolve_source(source)
        if instruct and template is None:
            template = trained_template(read_config(model_dir))
        target = resolve_device(device)
        if compiled:
            require_compiler(target, "--compile")
        model = load_model(model_dir, device=target, dtype=resolve_dtype(precision))
        limits = Limits.for_context(
            model.config.block_size,
            max_new_tokens=max_new_tokens,
            max_input_tokens=max_input_tokens,
        )
        return cls(
            model,
            get_tokenizer(),
            name=display_name(source),
            limits=limits,
            template=template or "seed",
            compiled=compiled,
        )

    def info(self) -> dict[str, str]:
        """The facts the model panel shows."""
        param = next(self.model.parameters())
        n = self.model.num_params()
        device = str(param.device)
        if param.device.type == "cuda":
            import torch

            device += f" ({torch.cuda.get_device_name(param.device)})"
        return {
            "Model": self.name,
            "Parameters": f"{n:,} ({n / 1e6:.1f}M)",
            "Context length": f"{self.model.config.block_size:,} tokens",
            "Layers / heads / width": (
                f"{self.model.config.n_layer} / {self.model.config.n_head} / "
                f"{self.model.config.n_embd}"
            ),
            "dtype": str(param.dtype).removeprefix("torch."),
            "Device": device,
            "Caps per request": (
                f"{self.limits.max_input_tokens:,} prompt tokens, "
                f"{self.limits.max_new_tokens:,} new tokens"
            ),
        }

    def generation_config(self, s: Sampling) -> GenerationConfig:
        """Check the controls against the caps; greedy when sampling is off. The API can send
        any number, NaN and infinities included: each is checked, none is silently rounded."""
        cap = self.limits.max_new_tokens
        max_new = _whole(s.max_new_tokens)
        if max_new is None or not 1 <= max_new <= cap:
            raise DemoInputError(f"Max new tokens must be a whole number between 1 and {cap}.")
        seed = s.seed
        if seed is not None:
            seed = _whole(seed)
            if seed is None or not 0 <= seed <= MAX_SEED:
                raise DemoInputError(f"The seed must be a whole number from 0 to {MAX_SEED}.")
        top_k = _whole(s.top_k)
        if not isinstance(s.do_sample, bool):  # the API's "false" would be truthy
            raise DemoInputError("Sampling must be true or false.")
        if s.do_sample:
            if not MIN_SCALE <= s.temperature < math.inf:
                raise DemoInputError(
                    f"Temperature must be at least {MIN_SCALE:g} (turn sampling off for greedy)."
                )
            if top_k is None or top_k < 0:
                raise DemoInputError("Top-k must be a whole number: 0 (off) or more.")
            if not 0 < s.top_p <= 1:
                raise DemoInputError("Top-p must be above 0 and at most 1.")
        return GenerationConfig(
            max_new_tokens=max_new,
            do_sample=bool(s.do_sample),
            temperature=float(s.temperature) if s.do_sample else 1.0,
            top_k=top_k if s.do_sample else 0,
            top_p=float(s.top_p) if s.do_sample else 1.0,
            seed=seed,
        )

    def _check_length(self, prompt: str, what: str, *, allow_special: bool = True) -> None:
        n = len(self.tokenizer.encode(prompt, allow_special=allow_special))  # as generation will
        cap = self.limits.max_input_tokens
        if n > cap:
            raise DemoInputError(f"{what} is too long: {n:,} tokens; the limit is {cap:,} tokens.")

    def complete(self, prompt: str, sampling: Sampling) -> Iterator[str]:
        """The continuation so far, after each new piece; checks run before this returns."""
        if not prompt or not prompt.strip():
            raise DemoInputError("Enter a prompt first.")
        cfg = self.generation_config(sampling)
        self._check_length(prompt, "The prompt")
        return _accumulate(
            stream_text(self.model, self.tokenizer, prompt, cfg, compiled=self.compiled)
        )

    def respond(self, instruction: str, input_text: str, sampling: Sampling) -> Iterator[str]:
        """The response so far: the instruction template goes in, only the response comes out."""
        if not instruction or not instruction.strip():
            raise DemoInputError("Enter an instruction first.")
        cfg = self.generation_config(sampling)
        prompt = format_prompt(instruction, input_text or "", self.template)
        self._check_length(
            prompt, "The instruction and input (with the template)", allow_special=False
        )
        # `<|endoftext|>` typed here is text, as in the SFT examples the model was tuned on
        pieces = stream_text(
            self.model, self.tokenizer, prompt, cfg, compiled=self.compiled, allow_special=False
        )
        return _accumulate(pieces)


def _whole(value) -> int | None:
    """`value` as an int if it is a whole number (3, 3.0, "3"), else None (2.7, NaN, inf, True,
    text). An int stays exact at any size (a float would round seeds above 2**53)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _accumulate(pieces: Iterator[str]) -> Iterator[str]:
    # closing(): a cancelled request closes this generator, which closes the decoder loop at once.
    text = ""
    with contextlib.closing(pieces):
        for piece in pieces:
            text += piece
            yield text
