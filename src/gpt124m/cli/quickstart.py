from __future__ import annotations

import argparse
from dataclasses import dataclass

from gpt124m.flags import PRECISIONS, from_args, option
from gpt124m.flags import add_arguments as add_flags

NAME = "quickstart"
HELP = "Offline end-to-end demo: prepare the bundled corpus, train a small model, evaluate, plot."


@dataclass(kw_only=True)
class QuickstartOptions:
    out_dir: str = option("runs/quickstart", "where the run goes (replaced)")
    max_steps: int | None = option(None, "override the recipe's step count")
    precision: str | None = option(
        None,
        "override the recipe's precision (default: auto, bf16 where the CPU runs it natively)",
        choices=PRECISIONS,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, QuickstartOptions)


def run(args: argparse.Namespace) -> int:
    from gpt124m.quickstart import run_quickstart

    opts = from_args(args, QuickstartOptions)
    run_quickstart(opts.out_dir, max_steps=opts.max_steps, precision=opts.precision)
    return 0
