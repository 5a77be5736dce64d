"""`gpt124m` command line: a thin layer over the library.

Each module in this package is one subcommand and defines NAME, HELP, `add_arguments(parser)` and
`run(args) -> int`. Modules import heavy libraries inside `run`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

# PyTorch's own switch, read once, at its first CPU allocation: CPU tensors of 2 MB and more get
# transparent huge pages. A training step's largest temporaries (the logits and their gradient,
# 400 MB each for the quickstart's 16 x 128 tokens) are fresh allocations every step, and in 4 KB
# pages each faults in 100,000 times: 30% of a `nano` step on a 2-core CPU. With huge pages, 512x
# fewer (`bench/huge_pages.py`: 1.4x faster steps, the same peak memory, the same numbers).
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def _command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line naming the problem (and exit 2), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpt124m",
        description="Pretrain, evaluate, instruction-tune, run and publish GPT-2-class models.",
    )
    _add_verbose(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
        _verbose_everywhere(cmd)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging on stderr"
    )


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-v` after a subcommand too (`gpt124m eval hellaswag -v`); unset there, it leaves what
    was given before the subcommand alone."""
    _add_verbose(parser, default=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _verbose_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(HUGE_PAGES_ENV, "1")  # before any tensor; =0 keeps 4 KB pages
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger(__name__).debug(
        "gpt124m %s | python %s | %s",
        _version(),
        sys.version.split()[0],
        " ".join(argv or sys.argv[1:]),
    )
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as e:  # bad input, and a full disk or a file in the way
        print(f"gpt124m {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt124m {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpt124m")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
