"""`gpt124m` command line: a thin layer over the library.

Each module in this package is one subcommand and defines NAME, HELP, `add_arguments(parser)` and
`run(args) -> int`. Modules import heavy libraries inside `run`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from pathlib import Path

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
    previous = _terminate_as_interrupt()
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError as e:
        if args.command not in TEXT_OUT:  # a run whose log reader died has not finished
            print(f"gpt124m {args.command}: error: {e}", file=sys.stderr)
            return 2
        _silence_stdout()  # `gpt124m generate ... | head`: the reader has what it wanted
        return 0
    except (ValueError, OSError) as e:  # bad input, and a full disk or a file in the way
        print(f"gpt124m {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not str(e).startswith("Could not determine home directory"):
            raise
        # pathlib's expanduser met `~name/...` for a user this machine does not have
        print(f"gpt124m {args.command}: error: {_unknown_home(argv)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"gpt124m {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"gpt124m {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not _NOT_INSTALLED:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _unknown_home(argv: list[str] | None) -> str:
    """Which argument names a home directory that does not exist (pathlib's error does not)."""
    for arg in argv if argv is not None else sys.argv[1:]:
        value = arg.split("=", 1)[-1]
        if value.startswith("~"):
            try:
                Path(value).expanduser()
            except RuntimeError:
                user = value[1:].split("/", 1)[0]
                return f"{value}: no user {user!r} on this machine, so no ~{user} folder"
    return "a path names the home folder of a user this machine does not have"


# commands whose product is what they print (prepare and eval print results, once their work
# is written): a reader gone means it has what it wanted
TEXT_OUT = ("generate", "chat", "info", "prepare", "eval")
LAUNCHED_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker
_NOT_INSTALLED = object()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`) as an interrupt: the run stops as Ctrl-C stops it,
    saying where to resume, instead of vanishing mid-line."""


def _raise_terminated(signum, frame):
    raise Terminated


def _terminate_as_interrupt():
    """Install the SIGTERM handler and return the one it replaces; not off the main thread
    (signals cannot be handled there), and not under torchrun: a rank blocked in a collective
    (a peer died) runs no Python handler, so torchrun's SIGTERM must end it as the default
    does, at once, not 30 s later by SIGKILL."""
    if threading.current_thread() is not threading.main_thread() or LAUNCHED_ENV in os.environ:
        return _NOT_INSTALLED
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush, into the closed pipe,
    does not print a second error."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpt124m")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
