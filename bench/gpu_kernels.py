"""bench/gpu.py's kernels section: which attention kernel a training step runs, and where each
compiled step's time goes.

Diagnostics, not among the issue's figures, so they run after its sections (throughput's rows
included: a profiler session can leave CUPTI hooked in, slowing the kernels timed after it,
pytorch/pytorch#144455). Each compiled configuration is built again: Inductor's caches hold its
compile from the throughput section, so it costs a trace, not a compile.
"""

from __future__ import annotations

import torch
from gpu_common import Context, Results
from gpu_profile import attention_backends, kernel_time, split_heads
from gpu_speed import configuration, shapes, training_step

from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.device import autocast as autocast_context
from gpt124m.model import GPT

# Profile a configuration only with this much of the section left: a rebuild traces again
PROFILE_LEAST_S = 25


def section(ctx: Context, results: Results) -> None:
    s = shapes(ctx)
    device, dtype = ctx.device, ctx.amp
    config = get_preset(s["preset"])
    x = torch.randint(0, GPT2_VOCAB_SIZE, (s["batch"], s["seq"] + 1), device=device)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # as throughput's rows
    results["flash_attention"] = flash_attention_runs(config, inputs, targets, device, dtype)
    results.headline("training attention can run on the flash kernel", results["flash_attention"])
    results["attention_backend"] = sdpa_choice(config, s["batch"], s["seq"], device, dtype)
    results.headline("SDPA's own choice for training attention", results["attention_backend"])
    rows = attention_backends(s["batch"], s["seq"], config.n_head, config.head_dim, device, dtype)
    results.table("attention backends (fwd+bwd)", rows)
    timed = [r for r in rows[1:] if r["fwd+bwd ms"] is not None]
    if timed and rows[0]["fwd+bwd ms"] is not None:
        best = max(timed, key=lambda r: r["speed vs default"])
        results.headline(
            "fastest attention backend alone vs SDPA's choice",
            f"{best['backend']} {best['speed vs default']:.2f}x",
        )
    for impl in ("gpt124m", "transformers"):
        name = f"{impl} + compile"
        if ctx.seconds_left() < PROFILE_LEAST_S:
            _profile_failed(results, name, "not run: out of time")
            continue
        model = forward = step = None
        try:
            torch.manual_seed(0)
            model, forward = configuration(impl, True, config, inputs, targets, ctx)
            step = training_step(model, forward, device, dtype)
            step()  # warm: the profile is of steady steps
            profiled(results, name, step, device)
        except Exception as e:
            _profile_failed(results, name, repr(e))
        finally:
            del model, forward, step
            ctx.cleanup_device()


def _profile_failed(results: Results, name: str, why: str) -> None:
    results["profile_failed"] = {**results.get("profile_failed", {}), name: why[:300]}


def profiled(results: Results, name: str, step, device: torch.device) -> None:
    """The kernel-time breakdown of a warm configuration; a profiler failure is recorded, and
    costs the configuration nothing."""
    try:
        profile = kernel_time(step, device)
    except Exception as e:
        _profile_failed(results, name, repr(e))
        return
    busy = profile["device_busy"]
    if busy is not None:
        results["device_busy"] = {**results.get("device_busy", {}), name: busy}
    shares = ", ".join(f"{r['kind']} {r['share']:.0%}" for r in profile["kinds"][:4])
    results.headline(
        f"time by kind, {name}", shares + ("" if busy is None else f"; device busy {busy:.0%}")
    )
    results.table(f"time by kind: {name}", profile["kinds"])
    results.table(f"largest kernels: {name}", profile["top"])


def flash_attention_runs(config, inputs, targets, device, dtype) -> bool | str:
    """Does a training step of our model run with SDPA limited to the flash kernel? (It refuses
    if the model passed an explicit mask or the dtype does not suit flash attention.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = GPT(config).to(device).train()
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast_context(device, dtype):
            _, loss = model(inputs[:1], targets[:1], return_logits=False)
        loss.backward()
        return True
    except RuntimeError as e:
        return f"no: {str(e).splitlines()[0][:200]}"


def sdpa_choice(config, batch: int, seq: int, device, dtype) -> str:
    """The kernel SDPA picks by default for the models' causal training attention: q, k and v
    split from one fused projection, as both models make them (on Hopper, recent torch prefers
    cuDNN's attention to flash for that layout). The profile's attention kernels confirm it."""
    from torch.nn.attention import SDPBackend

    c, h = config.n_embd, config.n_head
    # requires_grad: SDPA's choice for training also checks the backward's constraints
    qkv = torch.randn(batch, seq, 3 * c, device=device, dtype=dtype, requires_grad=True)
    q, k, v = split_heads(qkv, h)
    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name.lower()
    except (AttributeError, RuntimeError, ValueError) as e:  # a private function: may change
        return f"unknown ({type(e).__name__})"
