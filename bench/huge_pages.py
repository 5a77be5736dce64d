"""A CPU training step in 4 KB pages against one in transparent huge pages, as `gpt124m` runs.

The `gpt124m` command sets PyTorch's THP_MEM_ALLOC_ENABLE=1 (gpt124m.cli), which PyTorch reads
once per process, so each setting runs in its own process, the two taking turns for --rounds
rounds so that a change in the machine's load hits both alike. A child times forward, backward
and an AdamW step of a preset at the quickstart's shape and reports its median step, page faults
per step and peak RSS. Prints each round and the ratio of the medians (baseline: PyTorch's
default, 4 KB pages). The kernel must allow huge pages (printed first; `never` turns them off).

    python bench/huge_pages.py [--preset nano] [--batch 16] [--seq-len 128] [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpt124m.cli import HUGE_PAGES_ENV

THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def child(args: argparse.Namespace) -> None:
    import torch

    from gpt124m.config import get_preset
    from gpt124m.model import GPT
    from gpt124m.train.optim import build_adamw

    torch.manual_seed(0)
    model = GPT(get_preset(args.preset))
    opt = build_adamw(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len + 1))
    times, faults = [], []
    for i in range(args.steps + 2):  # two warm-up steps
        start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        _, loss = model(ids[:, :-1], ids[:, 1:], return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = dict(step_s=statistics.median(times), faults=statistics.median(faults))
    print(json.dumps(dict(out, peak_rss_mb=peak_mb)))


def kernel_setting() -> str:
    try:
        return Path(THP_SETTING).read_text().strip()
    except OSError:
        return "not available (not Linux?)"


def run_child(argv: list[str], huge: str) -> dict:
    env = {**os.environ, HUGE_PAGES_ENV: huge}
    run = subprocess.run(
        [sys.executable, __file__, "--child", *argv], env=env, capture_output=True, text=True
    )
    if run.returncode:
        sys.exit(f"child failed: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads(run.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="nano")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per child, after 2 warm-up")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    for flag in ("batch", "seq_len", "steps", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    from gpt124m.config import get_preset

    try:
        block = get_preset(args.preset).block_size
    except ValueError as e:
        p.error(str(e))
    if args.seq_len > block:
        p.error(f"--seq-len {args.seq_len} exceeds {args.preset}'s block size {block}")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"]
    rows = {"4 KB pages": [], "huge pages": []}
    print(f"{args.preset}, batch {args.batch} x {args.seq_len}, {args.steps} steps per child")
    print(f"kernel's transparent huge pages: {kernel_setting()}")
    for r in range(args.rounds):
        for name, huge in (("4 KB pages", "0"), ("huge pages", "1")):
            rows[name].append(res := run_child(argv, huge))
            print(
                f"round {r + 1} {name}: step {res['step_s']:.3f} s, "
                f"{res['faults']:,.0f} page faults/step, peak RSS {res['peak_rss_mb']:,.0f} MB"
            )
    base, huge = (statistics.median(x["step_s"] for x in rows[n]) for n in rows)
    rss = [statistics.median(x["peak_rss_mb"] for x in rows[n]) for n in rows]
    print(f"median step: 4 KB pages {base:.3f} s, huge pages {huge:.3f} s: {base / huge:.2f}x")
    print(f"peak RSS: {rss[0]:,.0f} MB -> {rss[1]:,.0f} MB ({rss[1] / rss[0] - 1:+.0%})")


if __name__ == "__main__":
    main()
