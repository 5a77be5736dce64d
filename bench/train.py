"""Training throughput of the `gpt2` preset at T=1024 against transformers' GPT2LMHeadModel.

Same shapes, batch, precision, optimizer and thread count, measured in one run. Prints tokens/s,
MFU (against the measured matmul peak on CPU, or the known GPU peak) and the ratio ours/HF.

    python bench/train.py [--batch 1] [--steps 3] [--precision fp32 bf16] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from _baseline import transformers_gpt2

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train.metrics import peak_flops
from gpt124m.train.optim import build_adamw
from gpt124m.train.trainer import autocast_context


def time_steps(model, step_fn, device, dtype, steps: int) -> float:
    opt = build_adamw(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)

    def one():
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, dtype):
            loss = step_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    one()  # warm-up (allocations, compile)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time both under torch.compile")
    args = p.parse_args()

    device = torch.device(args.device)
    config = get_preset("gpt2")
    tokens = args.batch * args.seq_len
    flops_per_token = config.flops_per_token(args.seq_len)
    x = torch.randint(0, 50257, (args.batch, args.seq_len + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]
    print(
        f"gpt2 preset, B={args.batch} T={args.seq_len}, {torch.get_num_threads()} threads, {device}"
    )
    print(f"{'precision':<10}{'impl':<22}{'tokens/s':>10}{'MFU':>8}{'/ HF eager':>11}")
    for precision in args.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        peak = peak_flops(device, dtype)
        torch.manual_seed(0)
        hf = transformers_gpt2(config).to(device).train()
        hf_s = time_steps(
            hf, lambda hf=hf: hf(inputs, labels=x[:, :-1]).loss, device, dtype, args.steps
        )
        results = [("transformers GPT2", hf_s)]
        if args.compile:
            hf_compiled = torch.compile(hf)
            hf_c_s = time_steps(
                hf,
                lambda m=hf_compiled: m(inputs, labels=x[:, :-1]).loss,
                device,
                dtype,
                args.steps,
            )
            results.append(("transformers + compile", hf_c_s))
        del hf
        torch.manual_seed(0)
        ours = GPT(config).to(device).train()
        ours_s = time_steps(ours, lambda m=ours: m(inputs, targets)[1], device, dtype, args.steps)
        results.append(("gpt124m", ours_s))
        if args.compile:
            compiled = torch.compile(ours)
            c_s = time_steps(
                ours, lambda m=compiled: m(inputs, targets)[1], device, dtype, args.steps
            )
            results.append(("gpt124m + compile", c_s))
        del ours
        for name, seconds in results:
            tps = tokens / seconds
            mfu = tps * flops_per_token / peak
            print(f"{precision:<10}{name:<22}{tps:>10,.0f}{mfu:>8.1%}{hf_s / seconds:>10.2f}x")
        if args.compile:
            print(f"{'':<10}both compiled: gpt124m / transformers = {hf_c_s / c_s:.2f}x")
        print(f"{'':<10}(peak used for MFU: {peak / 1e12:.2f} TFLOP/s {precision})")


if __name__ == "__main__":
    main()
