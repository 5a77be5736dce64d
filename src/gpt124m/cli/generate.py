from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

NAME = "generate"
HELP = "Generate text from a model directory or hub id; streams to stdout."

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, GPT-2 directory or hub id")
    p.add_argument("--prompt", help="prompt text (default: read stdin)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add (default 64)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="0 disables top-k (default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 disables it")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples to print")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.epilog = "Only the generated text goes to stdout; logs go to stderr."


def run(args: argparse.Namespace) -> int:
    from gpt124m.checkpoint import load_model
    from gpt124m.device import resolve_device, resolve_dtype
    from gpt124m.generate import GenerationConfig, stream_text
    from gpt124m.tokenizer import get_tokenizer

    if args.prompt is None and sys.stdin.isatty():
        log.info("reading the prompt from stdin (end it with Ctrl-D)")
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise ValueError("--prompt is empty (and nothing came on stdin)")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
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
        stop=tuple(args.stop),
    )
    try:
        cfg.validate()
    except ValueError as e:  # messages start with the field name: show it as the flag
        field = str(e).split()[0]
        raise ValueError(f"--{field.replace('_', '-')}: {e}") from None
    device = resolve_device(args.device)
    model = load_model(args.model, device=device, dtype=resolve_dtype(args.dtype))
    log.info("loaded %s (%s parameters) on %s", args.model, f"{model.num_params():,}", device)
    tokenizer = get_tokenizer()
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"\n--- sample {i + 1} ---", flush=True)
        sample_cfg = cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + i)
        for piece in stream_text(model, tokenizer, prompt, sample_cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
