"""bench/huge_pages.py runs as a user runs it: both settings timed in their own processes and
the ratio printed; a bad argument is one usage line with exit code 2."""

import re

from .conftest import run_script


def test_times_both_settings_and_prints_the_ratio():
    done = run_script("huge_pages.py", "--preset", "tiny", "--batch", "2", "--seq-len", "16",
                      "--steps", "1", "--rounds", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^kernel's transparent huge pages: .+$", out, re.M)
    for name in ("4 KB pages", "huge pages"):
        assert re.search(rf"^round 1 {name}: step [\d.]+ s, [\d,]+ page faults/step", out, re.M)
    assert re.search(r"^median step: 4 KB pages [\d.]+ s, huge pages [\d.]+ s: [\d.]+x$", out, re.M)


def test_bad_arguments_are_usage_errors():
    for args, message in [(("--preset", "gpt5"), "unknown model preset 'gpt5'"),
                          (("--rounds", "0"), "--rounds must be >= 1"),
                          (("--seq-len", "4096"), "exceeds nano's block size 256")]:  # fmt: skip
        done = run_script("huge_pages.py", *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
