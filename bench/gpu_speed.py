"""bench/gpu.py sections 4-5: training throughput against transformers, and a 24 GB card."""

from __future__ import annotations

import contextlib
import gc
import time

import torch
from _baseline import transformers_gpt2
from generate import copy_bandwidth  # bench/generate.py
from gpu_common import Context, RandomBatches, Results, add_row, sync, time_steps, train_records

from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.device import autocast as autocast_context
from gpt124m.model import GPT
from gpt124m.train import autobatch, distributed
from gpt124m.train.config import TrainConfig
from gpt124m.train.costs import peak_flops
from gpt124m.train.optim import build_adamw
from gpt124m.train.trainer import fit

BATCH_TOKENS_OF_THE_SEED = 589_824  # gpt124m-fineweb-edu: 576 sequences of 1024 per step


def shapes(ctx: Context) -> dict:
    if ctx.smoke:
        return dict(preset="tiny", seq=32, batch=2, warmup=1, windows=2, per_window=1)
    return dict(preset="gpt2", seq=1024, batch=32, warmup=3, windows=5, per_window=4)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """The best FLOP/s of a large square matmul here: MFU's honest denominator. On the CPU
    (--smoke: the code path, not the figure) a small one, since a CPU without native bf16 takes
    seconds for each 1024-square bf16 matmul (2 s on a 2-core AVX2 box; 60x its fp32)."""
    n = 8192 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(12):
        sync(device)
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * n**3 / best


def device_copy_bandwidth(device: torch.device) -> float:
    """bench/generate.py's copy bandwidth with a copy long enough on a GPU (1 GiB, ~0.3 ms on
    an H200) for the syncs around it not to count."""
    return copy_bandwidth(2**30 if device.type == "cuda" else 64 * 2**20, 8, device)


def training_step(model, forward, device, dtype):
    """A full step (forward, backward, clip, AdamW as the trainer builds it), no host sync."""
    opt = build_adamw(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, dtype):
            loss = forward()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def _compile(model, ctx: Context):
    # In the smoke run Dynamo traces but Inductor generates no code: seconds, not minutes.
    return torch.compile(model, backend="eager") if ctx.smoke else torch.compile(model)


def throughput(ctx: Context, results: Results) -> None:
    s = shapes(ctx)
    device, dtype = ctx.device, ctx.amp
    config = get_preset(s["preset"])
    tokens = s["batch"] * s["seq"]
    fpt = config.flops_per_token(s["seq"])
    datasheet = peak_flops(device, dtype) if device.type == "cuda" else None
    measured = ctx.ceiling("matmul", lambda: matmul_peak(device, dtype))
    results["peaks"] = {
        "datasheet_flops": datasheet,
        "measured_matmul_flops": measured,
        "measured_copy_bytes_per_s": ctx.ceiling("copy", lambda: device_copy_bandwidth(device)),
    }
    results["shape"] = {**s, "dtype": str(dtype), "flops_per_token": fpt}
    x = torch.randint(0, GPT2_VOCAB_SIZE, (s["batch"], s["seq"] + 1), device=device)
    # Contiguous, as the trainer's batches are: the compiled graph (and Inductor's cache entry,
    # which fit() below can then reuse) depends on the strides.
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    rates, failed = {}, {}

    def record_failure(name: str, e: Exception) -> None:
        failed[name] = f"{type(e).__name__}: {str(e)[:300]}"
        results["failed"] = failed

    def measure(impl: str, compiled: bool) -> None:
        name = impl + (" + compile" if compiled else "")
        ctx.say(f"throughput: {name}")
        model = forward = step = None
        try:  # one configuration failing (out of memory, a compile error) leaves the others
            torch.manual_seed(0)
            model, forward = configuration(impl, compiled, config, inputs, targets, ctx)
            step = training_step(model, forward, device, dtype)
            t = time_steps(
                step, device, warmup=s["warmup"], windows=s["windows"], per_window=s["per_window"]
            )
        except Exception as e:
            record_failure(name, e)
            return
        finally:
            del model, forward, step
            ctx.cleanup_device()
        rates[name] = rate = tokens / t["step_s"]
        add_row(results, "training step", _row(name, t, rate, fpt, datasheet, measured))

    measure("gpt124m", False)
    measure("gpt124m", True)
    # The headline figure next, while Inductor's cache holds the graph just compiled (fit()
    # compiles the same model on the same shapes), before transformers' compiles take time.
    ctx.say("throughput: the trainer's own loop (fit)")
    try:
        fit_row(ctx, s, results, fpt, datasheet, measured)
    except Exception as e:
        record_failure("fit() loop", e)
    finally:
        ctx.cleanup_device()
    # transformers compiled before eager, and the ratio at once: it is a target, should the
    # compiles run long
    measure("transformers", True)
    if "gpt124m + compile" in rates and "transformers + compile" in rates:
        ratio = rates["gpt124m + compile"] / rates["transformers + compile"]
        results["ratio_compiled"] = ratio
        results.headline("gpt124m / transformers, both compiled", f"{ratio:.2f}x")
    measure("transformers", False)
    if failed:
        raise RuntimeError("; ".join(f"{name}: {error}" for name, error in failed.items()))


def fit_row(ctx: Context, s: dict, results: Results, fpt, datasheet, measured) -> None:
    """`fit`'s own tokens/s (compiled on the GPU): the figure the issue's target names."""
    loop = trainer_loop(ctx, s, compile=not ctx.smoke)
    rate = loop["tokens_per_s"]
    results["fit_tokens_per_s"] = rate
    name = "gpt124m fit() loop" + (" + compile" if not ctx.smoke else "")
    add_row(results, "training step", _row(name, loop, rate, fpt, datasheet, measured))
    results.headline(
        "fit() tokens/s (bf16" + (", compiled)" if not ctx.smoke else ")"), f"{rate:,.0f}"
    )


def configuration(impl, compiled, config, inputs, targets, ctx: Context):
    """(model, forward) of one row: ours or transformers' GPT-2, eager or compiled."""
    if impl == "gpt124m":
        model = GPT(config).to(ctx.device).train()
        run = _compile(model, ctx) if compiled else model
        return model, lambda: run(inputs, targets, return_logits=False)[1]
    model = transformers_gpt2(config, unpadded_training=True).to(ctx.device).train()
    run = _compile(model, ctx) if compiled else model
    return model, lambda: run(inputs, labels=inputs).loss


def _row(name, t, rate, fpt, datasheet, measured) -> dict:
    return {
        "implementation": name,
        "tokens/s": rate,
        "step ms": t["step_s"] * 1000,
        "first step s (compile)": t.get("first_step_s"),
        "MFU datasheet": None if datasheet is None else rate * fpt / datasheet,
        "MFU measured": rate * fpt / measured,
        "peak GiB": t.get("peak_gib"),
    }


def trainer_loop(ctx: Context, s: dict, *, compile: bool) -> dict:
    """`fit` itself (data copies, accumulation weights, logging) on random CPU batches: the
    median of its logged step times after the first window (compilation)."""
    log_every = 2 if ctx.smoke else 10  # 30 clean steps: about a second more on the GPU
    steps = 3 * log_every + log_every  # a compile window, then three clean ones
    out = ctx.work / "loop"
    cfg = TrainConfig(
        model=s["preset"],
        out_dir=str(out),
        seq_len=s["seq"],
        micro_batch_size=s["batch"],
        total_batch_tokens=s["batch"] * s["seq"],
        max_steps=steps,
        warmup_steps=2,
        precision="bf16",
        compile=compile,
        device=ctx.device.type,
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
        log_every=log_every,
    )
    torch.manual_seed(0)
    model = GPT(get_preset(s["preset"]))
    batches = RandomBatches(s["batch"], s["seq"], GPT2_VOCAB_SIZE)
    if ctx.device.type == "cuda":
        # peak memory of the clean windows, as time_steps gives the other rows: reset when the
        # first window (the compilation) is done
        draw = batches.next_batch

        def next_batch():
            if batches.i == log_every:
                torch.cuda.reset_peak_memory_stats(ctx.device)
            return draw()

        batches.next_batch = next_batch
    fit(cfg, model, batches, info=distributed.init(ctx.device.type))
    records = train_records(out)
    clean = sorted(r["ms"] for r in records[1:])
    step_s = clean[len(clean) // 2] / 1000
    peak = (
        torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else None
    )
    return {
        "step_s": step_s,
        "tokens_per_s": cfg.total_batch_tokens / step_s,
        # the first logged window holds the compilation: its excess over clean steps
        "first_step_s": (records[0]["ms"] / 1000 - step_s) * log_every + step_s,
        "peak_gib": peak,
    }


def _time_micro_batch(model, micro: int, s: dict, device, dtype) -> dict:
    x = torch.randint(0, GPT2_VOCAB_SIZE, (micro, s["seq"] + 1), device=device)
    step = training_step(
        model, lambda: model(x[:, :-1], x[:, 1:], return_logits=False)[1], device, dtype
    )
    return time_steps(
        step, device, warmup=s["warmup"], windows=s["windows"], per_window=s["per_window"]
    )


def card_24gb(ctx: Context, results: Results) -> None:
    """With the allocator capped at a 24 GB card's memory, what `--micro-batch-size auto` picks
    for `gpt2` at T=1024 (the seed's 589,824-token step), and its eager tokens/s there (if that
    runs out of memory over the longer timed run: reported, and timed at the next smaller size
    that splits the step)."""
    s = shapes(ctx)
    device, dtype = ctx.device, ctx.amp
    config = get_preset(s["preset"])
    usable_gib = ctx.card_gib - 1.0  # the CUDA context lives outside the allocator's cap
    if device.type == "cuda":
        # what earlier sections still hold counts against the cap: reported, so that a smaller
        # pick than a real card's can be told apart
        results["held_before_cap_gib"] = torch.cuda.memory_reserved(device) / 2**30
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(usable_gib * 2**30 / total, device)
        results["cap_gib"] = usable_gib
    total_tokens = BATCH_TOKENS_OF_THE_SEED if not ctx.smoke else 8 * s["seq"]
    cfg = TrainConfig(
        model=s["preset"],
        seq_len=s["seq"],
        micro_batch_size="auto",
        total_batch_tokens=total_tokens,
    )
    torch.manual_seed(0)
    model = GPT(config)
    tried = []
    trial = autobatch.TrialStep(model, seq_len=s["seq"], device=device, amp_dtype=dtype)

    def fits(batch):
        start = time.perf_counter()
        ok = trial(batch)
        tried.append({"micro-batch": batch, "fits": ok, "trial s": time.perf_counter() - start})
        return ok

    start = time.perf_counter()
    try:
        micro = autobatch.choose(cfg, model, device=device, amp_dtype=dtype, fits=fits)
    finally:
        trial.close()
    results["search_s"] = time.perf_counter() - start
    results.table("auto trials", tried)
    ctx.say(f"card_24gb: auto picked {micro}; timing it")
    model = model.to(device).train()
    chosen, t = micro, None
    while t is None:
        # handled outside an except block, whose traceback would hold the step's tensors
        with contextlib.suppress(torch.OutOfMemoryError):
            t = _time_micro_batch(model, micro, s, device, dtype)
        if t is None:
            # auto's trials passed but a longer run did not: a finding, and the figure at the
            # next smaller micro-batch rather than none
            results["chosen_oom"] = chosen
            results.headline("OUT OF MEMORY at the chosen micro-batch", chosen)
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()  # not ctx.cleanup_device(): that lifts the cap
            smaller = [b for b in autobatch.candidates(total_tokens // s["seq"]) if b < micro]
            if not smaller:
                raise RuntimeError(f"micro-batch {chosen} and all below ran out of memory")
            micro = smaller[-1]
    rate = micro * s["seq"] / t["step_s"]
    add_row(
        results,
        "at the chosen micro-batch (eager, AdamW after each: a floor)",
        {
            "micro-batch": micro,
            **_row(
                "gpt124m",
                t,
                rate,
                config.flops_per_token(s["seq"]),
                None,
                ctx.ceiling("matmul", lambda: matmul_peak(device, dtype)),
            ),
        },
    )
    results.headline(
        f"{ctx.card_gib:g} GB card: auto micro-batch, tokens/s (eager)",
        f"{chosen}, {rate:,.0f}" + ("" if micro == chosen else f" (timed at {micro})"),
    )
