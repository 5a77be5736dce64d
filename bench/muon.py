"""Muon's optimizer step on a preset's block matrices: torch's own (`torch.optim.Muon`, whose
Newton-Schulz iteration always runs in bf16) against gpt124m's `Muon` with the iteration in fp32,
in one run, on this machine. Where bf16 matmuls are emulated (a CPU without AVX512-BF16 or AMX),
torch's step is the slow one; `gpt124m train --optimizer muon` picks fp32 there.

    python bench/muon.py                     # the quickstart's `nano` preset, CPU
    python bench/muon.py --preset tiny --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gpt124m.config import get_preset
from gpt124m.device import native_bf16
from gpt124m.model import GPT
from gpt124m.train.optim import Muon, hidden_matrices


def step_seconds(make, matrices: list[torch.nn.Parameter], steps: int) -> float:
    """Median seconds of one optimizer step, after one untimed step (state allocation)."""
    opt = make(matrices, lr=0.02, momentum=0.95)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="nano", help="model shape (default: nano, the quickstart's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    try:
        config = get_preset(args.preset)
    except ValueError as e:
        p.error(str(e))
    torch.manual_seed(0)
    matrices = hidden_matrices(GPT(config))
    for m in matrices:
        m.grad = torch.randn_like(m)
    cpu = torch.device("cpu")
    print(
        f"{args.preset}: {len(matrices)} matrices, "
        f"{sum(m.numel() for m in matrices) / 1e6:.1f}M parameters; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16(cpu)}"
    )
    torch_s = step_seconds(torch.optim.Muon, matrices, args.steps)
    fp32_s = step_seconds(
        lambda ms, **kw: Muon(ms, ns_dtype=torch.float32, **kw), matrices, args.steps
    )
    print(f"torch.optim.Muon (Newton-Schulz in bf16): {torch_s * 1e3:9.1f} ms/step  (baseline)")
    print(
        f"gpt124m Muon (Newton-Schulz in fp32):     {fp32_s * 1e3:9.1f} ms/step  "
        f"({torch_s / fp32_s:.2f}x the baseline's speed)"
    )


if __name__ == "__main__":
    main()
