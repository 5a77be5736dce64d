"""Greedy decode throughput of the `gpt2` preset against transformers' `GPT2LMHeadModel.generate`.

Both models hold the same random weights: a `GPT2LMHeadModel` is built, then imported into ours
through `gpt124m.hf.gpt2` (Conv1D transposed, vocabulary padded). Each repeat times ours and then
transformers on the same prompts in the same process; the best repeat of each is reported as new
tokens/s (the prompt's prefill included), with the ratio ours/HF, whether the greedy tokens are
identical, and the memory-bandwidth floor: bytes a decode step must read (every weight once, plus
the KV cache) divided by the bandwidth of a large tensor copy measured in the same run.

    python bench/generate.py [--batch 1 8] [--precision fp32 bf16] [--prompt-len 64]
                             [--new-tokens 128] [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from _baseline import transformers_gpt2
from gpu_common import sync

from gpt124m.checkpoint import build_model
from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.device import resolve_dtype
from gpt124m.generate import GenerationConfig, generate
from gpt124m.hf.gpt2 import gpt2_to_native


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hf_model(config):
    model = transformers_gpt2(config, vocab_size=GPT2_VOCAB_SIZE).eval()
    model.generation_config.eos_token_id = None  # always produce every requested token
    model.generation_config.pad_token_id = GPT2_VOCAB_SIZE - 1
    return model


def copy_bandwidth(
    n_bytes: int = 512 * 2**20, repeats: int = 5, device: torch.device | None = None
) -> float:
    """Bytes/s moved by `dst.copy_(src)` on a tensor far larger than the caches (read + write),
    on the CPU or, given one, a CUDA device (bench/gpu.py), timed from one sync to the next."""
    device = device or torch.device("cpu")
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.zeros_like(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def decode_bytes_per_step(config, batch: int, prompt_len: int, new: int, elem: int) -> float:
    """Weights read once per step (wte twice over: lm_head) plus the mean KV cache read."""
    weights = (config.num_params() - config.block_size * config.n_embd) * elem
    mean_len = prompt_len + new / 2
    kv = 2 * config.n_layer * batch * mean_len * config.n_embd * elem
    return weights + kv


def time_ours(model, prompts, new: int, compiled: bool = False) -> tuple[float, list[list[int]]]:
    """Seconds of one greedy `generate` call (it returns only once its tokens are on the host)."""
    cfg = GenerationConfig(max_new_tokens=new, eos_token_id=None)
    start = time.perf_counter()
    out = generate(model, prompts, cfg, compiled=compiled)
    return time.perf_counter() - start, out


def time_hf(model, prompts, new: int, device=None) -> tuple[float, list[list[int]]]:
    ids = torch.tensor(prompts, device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            do_sample=False,
        )
    tokens = out[:, ids.size(1) :].tolist()  # on the host, as time_ours's are
    return time.perf_counter() - start, tokens


def race(ours, hf, prompts, new: int, repeats: int, device=None):
    """Ours and transformers' `generate` on the same prompts, each warmed up on 4 tokens (the
    allocator, kernels, first-call paths), then timed in turns: (best seconds, tokens) of each."""
    time_ours(ours, prompts, 4)
    time_hf(hf, prompts, 4, device)
    best_ours = best_hf = float("inf")
    for _ in range(repeats):
        t, ours_out = time_ours(ours, prompts, new)
        best_ours = min(best_ours, t)
        t, hf_out = time_hf(hf, prompts, new, device)
        best_hf = min(best_hf, t)
    return (best_ours, ours_out), (best_hf, hf_out)


def time_compiled(model, prompts, new: int, repeats: int) -> tuple[float, float, list[list[int]]]:
    """Ours with `compiled=True`: the first call's seconds (on 4 tokens: the compile and, on
    CUDA, the graph's recording), the best of `repeats` calls and their tokens."""
    first, _ = time_ours(model, prompts, 4, compiled=True)
    best = float("inf")
    for _ in range(repeats):
        t, out = time_ours(model, prompts, new, compiled=True)
        best = min(best, t)
    return first, best, out


def first_divergence(a: list[list[int]], b: list[list[int]]) -> str:
    if a == b:
        return "identical"
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        for i, (s, t) in enumerate(zip(x, y, strict=False)):
            if s != t:
                return f"differ (row {row}, token {i})"
    return "differ (lengths)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compiled", action="store_true", help="also time ours with compiled=True (compiles first)"
    )
    args = p.parse_args()
    try:
        config = get_preset(args.preset)
    except ValueError as e:
        p.error(str(e))
    if args.prompt_len < 1 or args.new_tokens < 1:
        p.error("--prompt-len and --new-tokens must be at least 1")
    if args.prompt_len + args.new_tokens > config.block_size:
        p.error(
            f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds the "
            f"{args.preset} preset's block size ({config.block_size})"
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    reference = hf_model(config)
    ours = build_model(config, gpt2_to_native(reference.state_dict()), "random HF")
    ours.eval()
    bandwidth = copy_bandwidth()
    import transformers

    print(
        f"# {datetime.date.today()} {cpu_name()} ({os.cpu_count()} cores), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"# preset {args.preset} ({config.num_params():,} params, random weights), "
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy, "
        f"best of {args.repeats}; copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        f"{'dtype':<9} {'batch':>5} {'ours tok/s':>11} {'HF tok/s':>9} {'ours/HF':>8} "
        f"{'floor tok/s':>12} {'ours/floor':>10}  greedy tokens"
        + (
            f"  {'compiled tok/s':>14} {'compiled/HF':>11} {'compile s':>9}"
            if args.compiled
            else ""
        )
    )
    g = torch.Generator().manual_seed(args.seed)
    for dtype_name in args.precision:
        dtype = resolve_dtype(dtype_name)
        ours.to(dtype)
        reference.to(dtype)
        elem = torch.empty((), dtype=dtype).element_size()
        for batch in args.batch:
            prompts = torch.randint(0, GPT2_VOCAB_SIZE, (batch, args.prompt_len), generator=g)
            prompts = prompts.tolist()
            (best_ours, ours_out), (best_hf, hf_out) = race(
                ours, reference, prompts, args.new_tokens, args.repeats
            )
            new = batch * args.new_tokens
            step_bytes = decode_bytes_per_step(
                config, batch, args.prompt_len, args.new_tokens, elem
            )
            floor = batch * bandwidth / step_bytes
            print(
                f"{dtype_name:<9} {batch:>5} {new / best_ours:>11.1f} {new / best_hf:>9.1f} "
                f"{best_hf / best_ours:>7.2f}x {floor:>12.1f} {new / best_ours / floor:>9.0%}  "
                f"{first_divergence(ours_out, hf_out)}"
                + (
                    compiled_columns(ours, prompts, args, ours_out, best_hf)
                    if args.compiled
                    else ""
                ),
                flush=True,
            )


def compiled_columns(model, prompts, args, eager_out, best_hf: float) -> str:
    """The same decode with `compiled=True`: tokens/s, against HF, and the first call's seconds
    (the compile); a mismatch with the eager tokens is flagged."""
    first, best, out = time_compiled(model, prompts, args.new_tokens, args.repeats)
    new = len(prompts) * args.new_tokens
    flag = "" if out == eager_out else f" ({first_divergence(out, eager_out)} from eager)"
    return f"  {new / best:>14.1f} {best_hf / best:>10.2f}x {first:>9.1f}{flag}"


if __name__ == "__main__":
    main()
