from __future__ import annotations

import argparse
import logging
import sys

NAME = "demo"
HELP = "Serve a web demo (Gradio) of a base model and, optionally, an instruct model."

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, GPT-2 directory or hub id")
    p.add_argument("--instruct-model", help="instruction-tuned model: adds the Instruct tab")
    p.add_argument(
        "--template",
        choices=["seed", "alpaca"],
        help="the instruct model's prompt template (default: the one its directory records, "
        "else seed; as `gpt124m chat`)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also publish a public Gradio share link")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="cap on new tokens per request (default: min(256, half the context))",
    )
    p.add_argument(
        "--max-input-tokens",
        type=int,
        help="cap on prompt tokens per request (default: the context minus --max-new-tokens)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="requests generating at once")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting at most")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args: argparse.Namespace) -> int:
    from gpt124m.demo.app import build_app, launch, require_gradio
    from gpt124m.demo.backend import DemoModel

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    try:
        require_gradio()
    except ImportError as e:
        print(f"gpt124m demo: error: {e}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.template and not args.instruct_model:
        raise ValueError("--template applies to --instruct-model; give one")
    caps = {"max_new_tokens": args.max_new_tokens, "max_input_tokens": args.max_input_tokens}
    load = {"device": args.device, "dtype": args.dtype, **caps}
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
