"""The training loss's memory and time: gpt124m's blockwise `cross_entropy` against the usual
`F.cross_entropy` on an fp32 copy of the logits (what nanoGPT, and autocast, do), in one run.

Both take the same bf16 logits [B*T, 50304] (GPT-2's padded vocabulary, 50257 real columns) and
run forward and backward. Reported per implementation: the memory autograd keeps for backward
beyond the logits (measured with saved-tensor hooks, exact on any device), on CUDA the peak
memory the loss adds above its inputs, and the median time of a forward and backward.

    python bench/loss.py                         # CPU: 4 x 1024 tokens
    python bench/loss.py --device cuda --batch 32
bench/gpu.py runs it as its `loss` section.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.model import IGNORE_INDEX, cross_entropy

PADDED = get_preset("gpt2").padded_vocab_size  # 50304


def fp32_copy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :GPT2_VOCAB_SIZE].float(), targets, ignore_index=IGNORE_INDEX)


def blockwise_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, targets, GPT2_VOCAB_SIZE)


def implementations(compile: bool) -> dict:
    if compile:  # gpt124m's cross_entropy is F.cross_entropy under torch.compile
        return {"F.cross_entropy on an fp32 copy + compile": torch.compile(fp32_copy_loss)}
    return {
        "F.cross_entropy on an fp32 copy": fp32_copy_loss,
        "gpt124m cross_entropy (blockwise)": blockwise_loss,
    }


def saved_bytes(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, counting each storage once and not the logits."""
    storages = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() != logits.untyped_storage().data_ptr():
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits, targets)
    return sum(storages.values())


def measure(
    device: torch.device, batch: int, seq: int, repeats: int = 5, compile: bool = False
) -> list[dict]:
    rows = batch * seq
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, PADDED, device=device, generator=g).mul_(3).bfloat16()
    logits.requires_grad_(True)
    targets = torch.randint(0, GPT2_VOCAB_SIZE, (rows,), device=device, generator=g)
    results, losses = [], []
    for name, loss_fn in implementations(compile).items():
        row = {"loss": name, "tokens": rows}
        if "compile" in name:
            start = time.perf_counter()
            loss_fn(logits, targets).backward()
            row["compile s"] = time.perf_counter() - start
        row["kept for backward MiB"] = saved_bytes(loss_fn, logits, targets) / 2**20
        times = []
        for _ in range(repeats):
            logits.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            loss = loss_fn(logits, targets)
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
    assert all(abs(loss - losses[0]) < 1e-4 * abs(losses[0]) for loss in losses), losses
    return results


def with_ratios(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["time vs fp32 copy"] = row["fwd+bwd ms"] / rows[0]["fwd+bwd ms"]
    return rows


def section(ctx, results) -> None:
    """bench/gpu.py's `loss` section: the gpt2 training shape, 32 x 1024 tokens."""
    batch, seq = (2, 64) if ctx.smoke else (32, 1024)
    title = f"loss on {batch} x {seq} bf16 logits, forward and backward"
    rows = with_ratios(measure(ctx.device, batch, seq))
    results.table(title, rows)
    ours, theirs = rows[1], rows[0]
    key = "peak above inputs MiB" if "peak above inputs MiB" in ours else "kept for backward MiB"
    results.headline(
        f"eager loss memory ({key.removesuffix(' MiB')}), blockwise vs fp32 copy",
        f"{ours[key]:,.0f} vs {theirs[key]:,.0f} MiB; time {ours['time vs fp32 copy']:.2f}x",
    )
    rows = with_ratios(rows + measure(ctx.device, batch, seq, compile=True))
    results.table(title, rows)
    compiled = rows[2]
    results.headline(
        f"compiled loss ({key.removesuffix(' MiB')}; time vs eager fp32 copy)",
        f"{compiled[key]:,.0f} MiB; {compiled['time vs fp32 copy']:.2f}x",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also the loss under torch.compile")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"{device}, torch {torch.__version__}, {args.batch} x {args.seq} bf16 logits")
    rows = measure(device, args.batch, args.seq, args.repeats)
    if args.compile:
        rows += measure(device, args.batch, args.seq, args.repeats, compile=True)
    for row in with_ratios(rows):
        print(
            f"{row['loss']:<46} kept for backward {row['kept for backward MiB']:>8,.1f} MiB"
            + (
                f"  peak {row['peak above inputs MiB']:>8,.0f} MiB"
                if "peak above inputs MiB" in row
                else ""
            )
            + f"  {row['fwd+bwd ms']:8.1f} ms ({row['time vs fp32 copy']:.2f}x)"
        )


if __name__ == "__main__":
    main()
