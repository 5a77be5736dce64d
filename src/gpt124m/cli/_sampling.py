"""Sampling and device flags shared by `generate` and `chat`, so both read them the same way."""

from __future__ import annotations

import argparse


def add_sampling_arguments(
    p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float
) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens, help=f"(default {max_new_tokens})"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0 means greedy (default {temperature})",
    )
    p.add_argument("--top-k", type=int, default=50, help="0 disables top-k (default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 disables it")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def generation_config(args: argparse.Namespace, *, stop: tuple[str, ...] = ()):
    """A validated GenerationConfig; errors name the flag (`--top-p: ...`)."""
    from gpt124m.generate import GenerationConfig

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=stop,
    )
    try:
        cfg.validate()
    except ValueError as e:  # messages start with the field name: show it as the flag
        field = str(e).split()[0]
        raise ValueError(f"--{field.replace('_', '-')}: {e}") from None
    return cfg
