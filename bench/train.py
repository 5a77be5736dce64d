"""Training throughput of the `gpt2` preset at T=1024 against transformers' GPT2LMHeadModel.

Same shapes, batch, precision, optimizer (AdamW as the trainer builds it) and thread count,
measured in one run. The implementations take turns step by step and each keeps its fastest
step, so a change in the machine's load during the run hits all of them alike. Prints tokens/s,
MFU (against the measured matmul peak on CPU, or the known GPU peak) and the ratio to
transformers; on CPU also the AdamW step time, fused against foreach.

    python bench/train.py [--batch 1] [--steps 3] [--precision fp32 bf16] [--compile] [--profile]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _baseline import transformers_gpt2

from gpt124m.config import get_preset
from gpt124m.device import autocast as autocast_context
from gpt124m.model import GPT
from gpt124m.train.costs import peak_flops
from gpt124m.train.optim import build_adamw, param_groups


def training_step(model, loss_fn, device, dtype) -> Callable[[], None]:
    """One full step (forward, backward, clip, AdamW) of `model`; `loss_fn` runs the forward."""
    opt = build_adamw(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, dtype):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def best_step_seconds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Fastest step of each implementation, run in turns after one warm-up step each."""
    for step in steps.values():
        step()  # allocations, compilation
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def print_profile(step: Callable[[], None]) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def time_adamw_step(model, fused: bool, steps: int = 5) -> float:
    """Seconds per AdamW step over all of `model`'s parameters, with fixed gradients."""
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(
        param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=fused, foreach=not fused
    )
    opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed rounds (one step each)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time both under torch.compile")
    p.add_argument(
        "--profile", action="store_true", help="also print where one gpt124m step spends its time"
    )
    args = p.parse_args()

    device = torch.device(args.device)
    config = get_preset("gpt2")
    tokens = args.batch * args.seq_len
    flops_per_token = config.flops_per_token(args.seq_len)
    x = torch.randint(0, 50257, (args.batch, args.seq_len + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]
    print(
        f"gpt2 preset, B={args.batch} T={args.seq_len}, {torch.get_num_threads()} threads, "
        f"{device}, best of {args.steps} interleaved steps"
    )
    print(f"{'precision':<10}{'impl':<24}{'tokens/s':>10}{'MFU':>8}{'/ HF eager':>11}")
    for precision in args.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        peak = peak_flops(device, dtype)
        torch.manual_seed(0)
        hf = transformers_gpt2(config, unpadded_training=True).to(device).train()
        torch.manual_seed(0)
        ours = GPT(config).to(device).train()
        forwards = {
            "transformers": lambda m=hf: m(inputs, labels=x[:, :-1]).loss,
            "gpt124m": lambda m=ours: m(inputs, targets, return_logits=False)[1],
        }
        if args.compile:
            hf_c, ours_c = torch.compile(hf), torch.compile(ours)
            forwards["transformers + compile"] = lambda m=hf_c: m(inputs, labels=x[:, :-1]).loss
            forwards["gpt124m + compile"] = lambda m=ours_c: m(
                inputs, targets, return_logits=False
            )[1]
        steps = {
            name: training_step(hf if name.startswith("transformers") else ours, fn, device, dtype)
            for name, fn in forwards.items()
        }
        seconds = best_step_seconds(steps, args.steps)
        if args.profile:
            print_profile(steps["gpt124m"])
        for name, s in seconds.items():
            tps = tokens / s
            mfu = tps * flops_per_token / peak
            print(
                f"{precision:<10}{name:<24}{tps:>10,.0f}{mfu:>8.1%}{seconds['transformers'] / s:>10.2f}x"
            )
        if args.compile:
            ratio = seconds["transformers + compile"] / seconds["gpt124m + compile"]
            print(f"{'':<10}both compiled: gpt124m / transformers = {ratio:.2f}x")
        print(f"{'':<10}(peak used for MFU: {peak / 1e12:.2f} TFLOP/s {precision})")
        del hf, ours, steps
    if device.type == "cpu":
        model = GPT(config)
        foreach_s, fused_s = time_adamw_step(model, False), time_adamw_step(model, True)
        print(
            f"AdamW step, {model.num_params():,} params on cpu: foreach {foreach_s:.3f} s, "
            f"fused {fused_s:.3f} s ({foreach_s / fused_s:.1f}x; the trainer and both rows above "
            "use fused)"
        )


if __name__ == "__main__":
    main()
