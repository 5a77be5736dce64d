"""Answering instructions with a tuned model: the training template, then only the response."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from gpt124m.generate import GenerationConfig, stream_text
from gpt124m.model import GPT
from gpt124m.sft.template import TEMPLATES, format_prompt
from gpt124m.tokenizer import Tokenizer


def trained_template(config_data: dict) -> str:
    """The template a model directory was tuned with (recorded by `gpt124m sft`), else seed."""
    template = (config_data.get("sft") or {}).get("template")
    return template if template in TEMPLATES else "seed"


def respond(
    model: GPT,
    tokenizer: Tokenizer,
    instruction: str,
    input_text: str = "",
    *,
    template: str = "seed",
    cfg: GenerationConfig,
    compiled: bool = False,
) -> Iterator[str]:
    """Stream the response to one instruction; it ends at EOS (or the token budget).

    The prompt is encoded as SFT encoded its examples: `<|endoftext|>` typed in an instruction
    is text, never the token that ends a document. The budget is capped so prompt plus
    response fit the model's block. `compiled` is
    `stream_text`'s: a session of many answers compiles the decode step once per cache length
    (prompt plus budget, rounded up to 256 tokens), not once per answer.
    """
    if not instruction.strip():
        raise ValueError("the instruction is empty")
    prompt = format_prompt(instruction, input_text, template)
    n_prompt = len(tokenizer.encode(prompt))
    room = model.config.block_size - n_prompt + 1  # the last token is never fed back
    if room < 1:
        raise ValueError(
            f"the prompt is longer than the model's {model.config.block_size}-token block; "
            "shorten it"
        )
    asked = cfg.max_new_tokens is not None or cfg.max_length is not None
    budget = min(cfg.new_token_budget(n_prompt), room) if asked else room
    cfg = dataclasses.replace(cfg, max_new_tokens=budget, max_length=None)
    return stream_text(model, tokenizer, prompt, cfg, compiled=compiled, allow_special=False)
