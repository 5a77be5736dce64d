"""bench/muon.py runs as a user runs it: both steps timed and the ratio printed; a bad argument
is one usage line with exit code 2."""

import re

from .conftest import run_script


def test_times_torchs_step_and_the_fp32_one():
    done = run_script("muon.py", "--preset", "tiny", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^tiny: 8 matrices, .* native bf16: (True|False)$", done.stdout, re.M)
    assert re.search(
        r"^torch\.optim\.Muon \(Newton-Schulz in bf16\): +[\d.]+ ms/step", done.stdout, re.M
    )
    assert re.search(r"in fp32\): +[\d.]+ ms/step +\([\d.]+x the baseline's speed\)", done.stdout)


def test_bad_arguments_are_usage_errors():
    for args, message in [(("--preset", "gpt5"), "unknown model preset 'gpt5'"),
                          (("--steps", "0"), "--steps must be >= 1")]:  # fmt: skip
        done = run_script("muon.py", *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
