"""bench/gpu.py: HellaSwag scoring speed, and decode speed (eager, then compiled) against
transformers."""

from __future__ import annotations

import time

import torch
from _baseline import transformers_gpt2
from generate import decode_bytes_per_step, race, time_compiled  # bench/generate.py
from gpu_common import Context, Results, add_row, sync
from gpu_speed import device_copy_bandwidth

from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.loading import load_model
from gpt124m.model import GPT

HELLASWAG_ITEMS = 10_042  # the validation split
# decode_compiled: a batch size's compile, CUDA-graph recording and timed calls (estimated)
COMPILE_ONE_BATCH_S = 35


def hellaswag(ctx: Context, results: Results) -> None:
    """Items/s of `evaluate` (both conventions, bf16 autocast) at two batch sizes,
    projected to the whole validation split. Synthetic items in HellaSwag's layout and lengths
    unless --hellaswag-data gives real ones: speed does not depend on the words."""
    from gpt124m.eval.hellaswag import CONVENTIONS, evaluate, load_items

    n = 8 if ctx.smoke else 2000
    if ctx.hellaswag_data:
        items = load_items(ctx.hellaswag_data, limit=n)
        results["items"] = f"{len(items)} from {ctx.hellaswag_data}"
    else:
        from eval import synthetic_items  # bench/eval.py

        items = synthetic_items(n)
        results["items"] = f"{n} synthetic (bench/eval.py)"
    torch.manual_seed(0)
    model = GPT(get_preset("tiny" if ctx.smoke else "gpt2")).to(ctx.device).eval()
    kwargs = dict(device=ctx.device, autocast_dtype=ctx.amp, progress=False)
    evaluate(model, items[:8], batch_size=8, **kwargs)  # warm-up
    best = None
    for batch_size in (8,) if ctx.smoke else (16, 64):
        sync(ctx.device)
        start = time.perf_counter()
        evaluate(model, items, batch_size=batch_size, **kwargs)
        sync(ctx.device)
        seconds = time.perf_counter() - start
        rate = len(items) / seconds  # items/s, each item scored under every convention
        projected = HELLASWAG_ITEMS / rate
        add_row(
            results,
            f"HellaSwag scoring, {len(CONVENTIONS)} conventions ({', '.join(CONVENTIONS)}), bf16",
            {
                "batch (items)": batch_size,
                "items": len(items),
                "seconds": seconds,
                "items/s (both conventions)": rate,
                "projected s for 10,042 items": projected,
            },
        )
        if best is None or projected < best[1]:  # recorded at once: a timeout keeps it
            best = (batch_size, projected)
            results["projected_s"] = projected
            results.headline(
                "full HellaSwag, both conventions (projected)",
                f"{projected:.0f} s at --batch-size {batch_size}",
            )


def _same_weights(ctx: Context, config):
    """transformers' GPT2LMHeadModel and ours holding the same random weights: the former
    saved as a GPT-2 directory and loaded by gpt124m like any downloaded GPT-2."""
    torch.manual_seed(0)
    hf = transformers_gpt2(config, vocab_size=GPT2_VOCAB_SIZE).eval()
    hf.generation_config.eos_token_id = None  # always produce every requested token
    hf.generation_config.pad_token_id = GPT2_VOCAB_SIZE - 1
    folder = ctx.work / "decode-model"
    hf.save_pretrained(folder)
    ours = load_model(folder, device=ctx.device, dtype=ctx.amp)
    return hf.to(ctx.device, ctx.amp), ours


def _shape(ctx: Context):
    return get_preset("tiny" if ctx.smoke else "gpt2"), *((8, 4) if ctx.smoke else (64, 128))


def decode(ctx: Context, results: Results) -> None:
    """Greedy decoding, prompt 64 random tokens, 128 new, bf16 weights, best of 2 after a
    warm-up, new tokens/s (prefill included), ours against transformers' `generate`."""
    config, prompt_len, new = _shape(ctx)
    hf, ours = _same_weights(ctx, config)
    # Each decode step reads every weight once and the KV cache: at batch b the memory floor is
    # b tokens per such read. Far below it, a step is bound by kernel launches and the host.
    bandwidth = ctx.ceiling("copy", lambda: device_copy_bandwidth(ctx.device))
    elem = next(ours.parameters()).element_size()
    results["copy_bytes_per_s"] = bandwidth
    g = torch.Generator().manual_seed(0)
    headline = []
    eager = ctx.carried.setdefault("decode", {})  # for decode_compiled: plain numbers and tokens
    for batch in (1, 8, 64):
        prompts = torch.randint(0, GPT2_VOCAB_SIZE, (batch, prompt_len), generator=g).tolist()
        repeats = 1 if ctx.smoke else 2
        (best_ours, ours_out), (best_hf, hf_out) = race(ours, hf, prompts, new, repeats, ctx.device)
        same = sum(a == b for a, b in zip(ours_out, hf_out, strict=True))
        # tokens/s if each step only read its bytes (bench/generate.py's model of them)
        floor = batch * bandwidth / decode_bytes_per_step(config, batch, prompt_len, new, elem)
        add_row(
            results,
            f"greedy decode, prompt {prompt_len}, {new} new tokens, bf16",
            {
                "batch": batch,
                "gpt124m tok/s": batch * new / best_ours,
                "transformers tok/s": batch * new / best_hf,
                "ratio": best_hf / best_ours,
                "gpt124m share of memory floor": batch * new / best_ours / floor,
                "rows with identical tokens": f"{same}/{batch}",
            },
        )
        headline.append(f"b{batch} {best_hf / best_ours:.2f}x")
        results.headline("decode gpt124m / transformers", ", ".join(headline))
        eager[batch] = (best_ours, best_hf, ours_out, prompts, floor)


def decode_compiled(ctx: Context, results: Results) -> None:
    """The same greedy decode with `compiled=True` (each step one CUDA graph), against the decode
    section's eager rows, on the same weights (saved there). A section of its own, after the
    issue's figures, because its compiles take a minute. CUDA graphs that Inductor declined to
    use are counted: then the step is compiled but still launched kernel by kernel."""
    from torch._dynamo.utils import counters

    eager = ctx.carried.get("decode")
    saved = ctx.work / "decode-model"
    if not eager or not saved.exists():
        raise RuntimeError("needs the decode section's eager rows and weights: run it first")
    config, prompt_len, new = _shape(ctx)
    ours = load_model(saved, device=ctx.device, dtype=ctx.amp)
    headline = []
    for batch in [b for b in ((1,) if ctx.smoke else (1, 64)) if b in eager]:
        if ctx.seconds_left() < COMPILE_ONE_BATCH_S:  # not stopped midway in a graph's capture
            results["skipped"] = {**results.get("skipped", {}), batch: "out of time"}
            continue
        best_eager, best_hf, eager_out, prompts, floor = eager[batch]
        skips = counters["inductor"]["cudagraph_skips"]
        first, best, out = time_compiled(ours, prompts, new, 1 if ctx.smoke else 2)
        same = sum(a == b for a, b in zip(out, eager_out, strict=True))
        add_row(
            results,
            f"greedy decode compiled (compiled=True), prompt {prompt_len}, {new} new tokens, bf16",
            {
                "batch": batch,
                "compiled tok/s": batch * new / best,
                "/ gpt124m eager": best_eager / best,
                "/ transformers": best_hf / best,
                "share of memory floor": batch * new / best / floor,
                "first call s (compile)": first,
                "CUDA graphs skipped": counters["inductor"]["cudagraph_skips"] - skips,
                "rows equal to eager": f"{same}/{batch}",
            },
        )
        headline.append(f"b{batch} {best_hf / best:.2f}x")
        results.headline("decode compiled / transformers", ", ".join(headline))
