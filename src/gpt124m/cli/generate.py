from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass

from gpt124m.cli._sampling import SamplingOptions, generation_config
from gpt124m.flags import add_arguments as add_flags
from gpt124m.flags import from_args, option

NAME = "generate"
HELP = "Generate text from a model directory or hub id; streams to stdout."

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class GenerateOptions(SamplingOptions):
    prompt: str | None = option(
        None,
        (
            "prompt text (default: read stdin, less the newline that ends its last line); "
            "<|endoftext|> in it is the end-of-text token ('<|endoftext|>' alone: an "
            "unconditional start)"
        ),
    )
    num_samples: int = option(1, "independent samples to print")
    stop: list[str] = option(default_factory=list, help="stop string (repeatable)", repeat=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, GenerateOptions)
    p.epilog = "Only the generated text goes to stdout; logs go to stderr."


def run(args: argparse.Namespace) -> int:
    args = from_args(args, GenerateOptions)
    if args.prompt is None and sys.stdin.isatty():
        log.info("reading the prompt from stdin (end it with Ctrl-D)")
    prompt = args.prompt
    if prompt is None:  # `echo Hi |` and a typed line end in a newline that --prompt Hi has not
        prompt = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not prompt:
        raise ValueError("--prompt is empty (and nothing came on stdin)")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    from gpt124m.device import require_compiler, resolve_device, resolve_dtype  # torch, from here
    from gpt124m.generate import stream_text
    from gpt124m.loading import load_model
    from gpt124m.tokenizer import get_tokenizer

    cfg = generation_config(args, stop=tuple(args.stop))
    device = resolve_device(args.device)
    if args.compile:
        require_compiler(device, "--compile")
    model = load_model(args.model, device=device, dtype=resolve_dtype(args.precision))
    log.info("loaded %s (%s parameters) on %s", args.model, f"{model.num_params():,}", device)
    tokenizer = get_tokenizer()
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"\n--- sample {i + 1} ---", flush=True)
        sample_cfg = cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + i)
        for piece in stream_text(model, tokenizer, prompt, sample_cfg, compiled=args.compile):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
