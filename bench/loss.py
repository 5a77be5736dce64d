"""The training loss's memory and time, head included: gpt124m's `linear_cross_entropy` (no
logits) and blockwise `cross_entropy` against the usual `F.cross_entropy` on an fp32 copy of the
logits (what nanoGPT, and autocast, do), in one run.

Each starts from the same final hidden states [B*T, C] and tied head [50304, C] (GPT-2's padded
vocabulary, 50257 real columns), makes the loss and runs backward to both, under bf16 autocast as
training does (or in fp32). Reported per implementation: the memory autograd keeps for backward
beyond the inputs (measured with saved-tensor hooks, exact on any device), on CUDA the peak memory
the loss adds above its inputs, and the median time of a forward and backward.

    python bench/loss.py                                   # CPU: gpt2's width, 4 x 1024 tokens
    python bench/loss.py --preset nano --batch 16 --seq 128 --dtype fp32   # the quickstart's step
    python bench/loss.py --device cuda --batch 32
bench/gpu.py runs it as its `loss` section.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F

from gpt124m.cli import HUGE_PAGES_ENV
from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.model import IGNORE_INDEX, cross_entropy, linear_cross_entropy

BASELINE = "head + F.cross_entropy on an fp32 copy"


def fp32_copy_loss(x, weight, targets):
    logits = F.linear(x, weight)[:, :GPT2_VOCAB_SIZE]
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def blockwise_loss(x, weight, targets):
    return cross_entropy(F.linear(x, weight), targets, GPT2_VOCAB_SIZE)


def no_logits_loss(x, weight, targets):
    return linear_cross_entropy(x, weight, targets, GPT2_VOCAB_SIZE)


def implementations(compile: bool) -> dict:
    if compile:  # under torch.compile, gpt124m's losses are this very F.cross_entropy
        return {BASELINE + " + compile": torch.compile(fp32_copy_loss)}
    return {
        BASELINE: fp32_copy_loss,
        "head + gpt124m cross_entropy (blockwise)": blockwise_loss,
        "gpt124m linear_cross_entropy (no logits)": no_logits_loss,
    }


def saved_bytes(loss_fn, inputs: tuple) -> int:
    """Bytes autograd keeps for backward, counting each storage once and not the inputs'."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    storages = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*inputs)
    return sum(storages.values())


def measure(
    device: torch.device,
    batch: int,
    seq: int,
    repeats: int = 5,
    compile: bool = False,
    preset: str = "gpt2",
    dtype: str = "bf16",
) -> list[dict]:
    config = get_preset(preset)
    rows = batch * seq
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, config.n_embd, device=device, generator=g).requires_grad_(True)
    weight = torch.randn(config.padded_vocab_size, config.n_embd, device=device, generator=g)
    weight.mul_(0.1).requires_grad_(True)
    targets = torch.randint(0, GPT2_VOCAB_SIZE, (rows,), device=device, generator=g)
    inputs = (x, weight, targets)
    if dtype == "bf16":
        amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        amp = contextlib.nullcontext
    results, losses = [], []
    for name, loss_fn in implementations(compile).items():
        row = {"loss": name, "tokens": rows}
        if "compile" in name:
            start = time.perf_counter()
            with amp():
                loss_fn(*inputs).backward()
            row["compile s"] = time.perf_counter() - start
        with amp():
            row["kept for backward MiB"] = saved_bytes(loss_fn, inputs) / 2**20
        times = []
        for _ in range(repeats):
            x.grad = weight.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            with amp():
                loss = loss_fn(*inputs)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                row["peak above inputs MiB"] = (
                    torch.cuda.max_memory_allocated(device) - base
                ) / 2**20
            times.append(time.perf_counter() - start)
        row["fwd+bwd ms"] = statistics.median(times[1:] if repeats > 1 else times) * 1000
        losses.append(loss.item())
        results.append(row)
    # the same number, or the comparison means nothing
    assert all(abs(loss - losses[0]) < 1e-3 * abs(losses[0]) for loss in losses), losses
    return results


def with_ratios(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["time vs fp32 copy"] = row["fwd+bwd ms"] / rows[0]["fwd+bwd ms"]
    return rows


def section(ctx, results) -> None:
    """bench/gpu.py's `loss` section: the gpt2 training shape, 32 x 1024 tokens, bf16 (smoke:
    the tiny model's width, 2 x 64)."""
    batch, seq, preset = (2, 64, "tiny") if ctx.smoke else (32, 1024, "gpt2")
    title = f"head and loss on {batch} x {seq} tokens, bf16, forward and backward"
    rows = with_ratios(measure(ctx.device, batch, seq, preset=preset))
    results.table(title, rows)
    theirs, ours = rows[0], rows[2]
    key = "peak above inputs MiB" if "peak above inputs MiB" in ours else "kept for backward MiB"
    results.headline(
        f"eager head+loss memory ({key.removesuffix(' MiB')}), no logits vs fp32 copy",
        f"{ours[key]:,.0f} vs {theirs[key]:,.0f} MiB; time {ours['time vs fp32 copy']:.2f}x",
    )
    rows = with_ratios(rows + measure(ctx.device, batch, seq, compile=True, preset=preset))
    results.table(title, rows)
    compiled = rows[3]
    results.headline(
        f"compiled head+loss ({key.removesuffix(' MiB')}; time vs eager fp32 copy)",
        f"{compiled[key]:,.0f} MiB; {compiled['time vs fp32 copy']:.2f}x",
    )


def main() -> None:
    os.environ.setdefault(HUGE_PAGES_ENV, "1")  # as the `gpt124m` command runs, before any tensor
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="gpt2", help="the model whose width the head has")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also the loss under torch.compile")
    args = p.parse_args()
    device = torch.device(args.device)
    shape = f"{args.batch} x {args.seq} tokens, {args.preset}'s width, {args.dtype}"
    print(f"{device}, torch {torch.__version__}, {shape}")
    kw = dict(preset=args.preset, dtype=args.dtype)
    rows = measure(device, args.batch, args.seq, args.repeats, **kw)
    if args.compile:
        rows += measure(device, args.batch, args.seq, args.repeats, compile=True, **kw)
    for row in with_ratios(rows):
        print(
            f"{row['loss']:<50} kept for backward {row['kept for backward MiB']:>8,.1f} MiB"
            + (
                f"  peak {row['peak above inputs MiB']:>8,.0f} MiB"
                if "peak above inputs MiB" in row
                else ""
            )
            + f"  {row['fwd+bwd ms']:8.1f} ms ({row['time vs fp32 copy']:.2f}x)"
        )


if __name__ == "__main__":
    main()
