"""What the tests of bench/ scripts share."""

import importlib
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str):
    """A module of bench/ (scripts that import their siblings, not a package), imported with
    bench/ on the path only while it loads."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """bench/`name` run as a user runs it, with its output captured as text."""
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=120
    )
