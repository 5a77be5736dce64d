from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from gpt124m.cli._sampling import SamplingOptions, generation_config
from gpt124m.flags import add_arguments as add_flags
from gpt124m.flags import from_args, option
from gpt124m.sft.template import TEMPLATES

NAME = "chat"
HELP = "Talk to an instruction-tuned model: one instruction per line, or one shot."

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ChatOptions(SamplingOptions):
    template: str | None = option(
        None,
        "prompt template; use the one the model was tuned with (default: the template the "
        "model directory records, else seed)",
        choices=TEMPLATES,
    )
    instruction: str | None = option(None, "answer this one instruction and exit")
    input: str = option("", "optional input for --instruction")
    max_new_tokens: int = 256
    temperature: float = 0.7


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, ChatOptions)
    p.epilog = (
        "Without --instruction, each line read from stdin is an instruction; the response "
        "streams to stdout, and the session ends at end of input (Ctrl-D)."
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.checkpoint import read_config
    from gpt124m.device import require_compiler, resolve_device, resolve_dtype
    from gpt124m.loading import load_model, resolve_source
    from gpt124m.sft.chat import respond, trained_template
    from gpt124m.tokenizer import get_tokenizer

    args = from_args(args, ChatOptions)
    if args.input and args.instruction is None:
        raise ValueError("--input needs --instruction")
    cfg = generation_config(args)
    model_dir = resolve_source(args.model)
    template = args.template or trained_template(read_config(model_dir))
    device = resolve_device(args.device)
    if args.compile:
        require_compiler(device, "--compile")
    model = load_model(model_dir, device=device, dtype=resolve_dtype(args.precision))
    log.info("loaded %s on %s; template %s", args.model, device, template)
    tokenizer = get_tokenizer()

    def answer(instruction: str, input_text: str = "") -> None:
        pieces = respond(
            model, tokenizer, instruction, input_text,
            template=template, cfg=cfg, compiled=args.compile,
        )  # fmt: skip
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()

    if args.instruction is not None:
        answer(args.instruction, args.input)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("One instruction per line; Ctrl-D to quit.", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            answer(line.strip())
        except ValueError as e:
            print(f"gpt124m chat: error: {e}", file=sys.stderr)
    return 0
