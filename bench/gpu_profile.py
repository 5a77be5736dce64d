"""bench/gpu.py's throughput section: where a training step's time goes, by kind of kernel.

Device time is scarce, so the one GPU run should say not only how fast a step is but why: the
share of matrix multiplies, attention, Inductor's fused kernels, the optimizer and copies, the
largest kernels by name (which also shows which SDPA backend and which GEMM library ran), and how
busy the device was (a step whose kernels leave the GPU idle is bound by the host, not by math).
On the CPU (the smoke run) the same tables are built from the aten operators' own time.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import torch
from torch.autograd import DeviceType

# (kind, what a lower-cased kernel or operator name contains); the first match wins, so the
# order matters: "fmha_cutlass..." is attention, not a GEMM; "triton_per_fused__to_copy..." is
# one of Inductor's fused kernels, not a copy; "triton_tem_fused_mm..." is an Inductor GEMM.
KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matmul", ("triton_tem", "gemm", "gemv", "xmma", "nvjet", "cutlass", "cublas", "aten::mm",
                "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("fused elementwise (Inductor)", ("triton_",)),
    ("optimizer and clipping", ("adam", "multi_tensor", "_foreach", "vector_norm", "optimizer.")),
    ("copy and fill", ("memcpy", "memset", "copy", "fill", "zero_")),
)  # fmt: skip
OTHER = "other"


def kind_of(name: str) -> str:
    low = name.lower()
    if low.startswith("triton_") and not low.startswith("triton_tem"):
        # Inductor names a fused kernel after the ops it absorbed ("..._flash_attention_..."
        # for a layout change feeding attention): it is Inductor's, whatever it mentions.
        return "fused elementwise (Inductor)"
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return OTHER


def timed_events(averages, cuda: bool) -> list[tuple[str, int, float]]:
    """(name, calls, microseconds) of what ran. On CUDA the kernels, memcpys and memsets
    themselves: not the operators that launched them, nor the labelled regions (a compiled graph's
    call, `Optimizer.step`) the profiler also reports as CUDA events spanning their kernels, either
    of which would count the same time twice. On the CPU each operator's self time, which adds up
    to the time spent in operators."""
    if cuda:
        rows = [(e.key, e.count, e.self_device_time_total) for e in averages
                if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]  # fmt: skip
    else:
        rows = [(e.key, e.count, e.self_cpu_time_total) for e in averages]
    return [row for row in rows if row[2] > 0]


def kernel_time(step: Callable[[], None], device: torch.device, *, steps: int = 2) -> dict:
    """Profile `steps` calls of an already warm `step`: per-step milliseconds by kind and of the
    largest kernels, and the device's busy share of the wall time (CUDA only; profiling itself
    adds some host time, so this is a lower bound)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1000 / steps
    events = timed_events(prof.key_averages(), cuda)
    if cuda and not events:  # CUPTI did not start (it may not under a sandboxed runtime)
        raise RuntimeError("the profiler recorded no CUDA kernels")
    events = [(name, count, us / 1000 / steps) for name, count, us in events]
    total = sum(ms for _, _, ms in events)
    by_kind: dict[str, float] = {}
    for name, _, ms in events:
        kind = kind_of(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    kinds = [
        {"kind": kind, "ms per step": ms, "share": ms / total}
        for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])
    ]
    top = [
        {"kernel" if cuda else "operator": name[:100], "kind": kind_of(name),
         "calls per step": count / steps, "ms per step": ms, "share": ms / total}
        for name, count, ms in sorted(events, key=lambda e: -e[2])[:12]
    ]  # fmt: skip
    return {
        "wall_ms_per_step": wall_ms,
        "measured_ms_per_step": total,
        "device_busy": total / wall_ms if cuda else None,
        "kinds": kinds,
        "top": top,
    }


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """q, k and v [B, H, T, D] as views of one fused projection [B, T, 3C], as both models make
    them (the layout decides which kernels SDPA may pick)."""
    batch, seq, fused = qkv.shape
    width = fused // 3
    return tuple(
        t.view(batch, seq, heads, width // heads).transpose(1, 2) for t in qkv.split(width, 2)
    )


def attention_backends(
    batch: int, seq: int, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> list[dict]:
    """Causal attention forward and backward at the training shape under each SDPA backend
    alone, against SDPA's own choice: whether pinning a backend would pay, measured in the run
    that shows attention's share of a step, without another compile. q, k and v are views of
    one fused projection (`split_heads`), and the backward returns gradients instead of
    accumulating them, so every row times attention alone."""
    from gpu_common import time_steps
    from torch.nn.attention import SDPBackend, sdpa_kernel

    width = heads * head_dim
    qkv = torch.randn(batch, seq, 3 * width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype)

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(
            *split_heads(qkv, heads), is_causal=True
        )
        torch.autograd.grad(out, qkv, grad)

    alone = (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    rows = []
    for backend in (None, *alone):
        name = "default (SDPA's choice)" if backend is None else backend.name.lower()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # SDPA says why a kernel declined as a warning
            try:
                with contextlib.nullcontext() if backend is None else sdpa_kernel([backend]):
                    for _ in range(3 if rows else 6):  # first calls load kernels, spin threads
                        step()
                    t = time_steps(step, device, warmup=1, windows=3, per_window=3)
            except Exception as e:  # not available for this device, dtype or shape
                why = [str(w.message) for w in said] + [str(e) or type(e).__name__]
                rows.append({"backend": name, "fwd+bwd ms": None, "note": why[0][:160]})
                continue
        rows.append({"backend": name, "fwd+bwd ms": t["step_s"] * 1000, "note": ""})
    base = rows[0]["fwd+bwd ms"]
    for row in rows:
        ms = row["fwd+bwd ms"]
        row["speed vs default"] = None if ms is None or base is None else base / ms
    return rows
