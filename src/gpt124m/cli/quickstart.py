from __future__ import annotations

import argparse

NAME = "quickstart"
HELP = "Offline end-to-end demo: prepare the bundled corpus, train a small model, evaluate, plot."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="runs/quickstart", help="where the run goes (replaced)")
    p.add_argument("--max-steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="override the recipe's precision (auto: bf16 where the CPU runs it natively)",
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.quickstart import run_quickstart

    run_quickstart(args.out_dir, max_steps=args.max_steps, precision=args.precision)
    return 0
