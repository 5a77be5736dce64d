from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from gpt124m.flags import DECODE_COMPILE_HELP, DEVICE_HELP, WEIGHT_PRECISIONS, from_args, option
from gpt124m.flags import add_arguments as add_flags
from gpt124m.sft.template import TEMPLATES

NAME = "demo"
HELP = "Serve a web demo (Gradio) of a base model and, optionally, an instruct model."

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DemoOptions:
    model: str = option(help="model directory, GPT-2 directory or hub id")
    instruct_model: str | None = option(None, "instruction-tuned model: adds the Instruct tab")
    template: str | None = option(
        None,
        "the instruct model's prompt template (default: the one its directory records, else "
        "seed; as `gpt124m chat`)",
        choices=TEMPLATES,
    )
    host: str = option(
        "127.0.0.1",
        "address to listen on: an IP address or a name that resolves (default: loopback)",
    )
    port: int = option(7860, "port to listen on")
    share: bool = option(False, "also publish a public Gradio share link")
    max_new_tokens: int | None = option(
        None, "cap on new tokens per request (default: min(256, half the context))"
    )
    max_input_tokens: int | None = option(
        None, "cap on prompt tokens per request (default: the context minus --max-new-tokens)"
    )
    concurrency: int = option(1, "requests generating at once")
    queue_size: int = option(16, "requests waiting at most")
    device: str = option("auto", DEVICE_HELP)
    precision: str = option("fp32", "the weights' precision", choices=WEIGHT_PRECISIONS)
    compile: bool = option(False, DECODE_COMPILE_HELP)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, DemoOptions)


def run(args: argparse.Namespace) -> int:
    from gpt124m.demo.app import build_app, check_host, launch, require_gradio
    from gpt124m.demo.backend import DemoModel

    args = from_args(args, DemoOptions)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    try:
        require_gradio()
    except ImportError as e:
        print(f"gpt124m demo: error: {e}", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:  # Gradio checks its server at the port: 0 cannot be
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    check_host(args.host)  # before the models load, not after, in Gradio's words
    if args.template and not args.instruct_model:
        raise ValueError("--template applies to --instruct-model; give one")
    caps = {"max_new_tokens": args.max_new_tokens, "max_input_tokens": args.max_input_tokens}
    load = {"device": args.device, "precision": args.precision, "compiled": args.compile, **caps}
    model = DemoModel.load(args.model, **load)
    log.info("completion model: %s", _describe(model))
    instruct = None
    if args.instruct_model:
        instruct = DemoModel.load(
            args.instruct_model, instruct=True, template=args.template, **load
        )
        log.info("instruct model (%s template): %s", instruct.template, _describe(instruct))
    app = build_app(
        model, instruct_model=instruct, concurrency=args.concurrency, queue_size=args.queue_size
    )
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0


def _describe(model) -> str:
    return "; ".join(f"{k} {v}" for k, v in model.info().items())
