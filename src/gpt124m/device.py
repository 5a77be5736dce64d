"""Pick the device, dtype and autocast precision a command runs on, with errors that name the bad
value; and the few CUDA settings and copies that make training fast there without changing CPU
behaviour."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

# The weights' dtype for inference, by the precision names every command uses (gpt124m.flags).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TF32_ENV = "GPT124M_TF32"  # "0" keeps fp32 matmuls in full fp32 on CUDA (exact CPU comparisons)


def require_compiler(device: torch.device, flag: str) -> None:
    """`torch.compile` on CPU builds C++ kernels: say so in one line before a run starts, not in
    a traceback minutes into it. `flag` is the switch to drop (`--compile`)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ValueError(
            f"{flag} on CPU needs a C++ compiler (Inductor builds its kernels with one): "
            f"install g++ (e.g. apt-get install g++) or drop {flag}"
        )


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available on this machine")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: choose auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"--precision {name!r}: choose one of {', '.join(DTYPES)}") from None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype; 'auto' picks bf16 where the hardware runs it natively."""
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else torch.float32


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls in hardware. Elsewhere torch emulates them, many times
    slower than fp32 (a 1024-square matmul: 60x on a 2-core AVX2 CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and later
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        return capability in ("AVX512", "AMX") and _cpu_has_bf16()
    return False


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`; fp32 or None runs as is."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_tf32(device: torch.device) -> bool:
    """On CUDA, let fp32 matmuls and convolutions run on TF32 tensor cores (about 8x the fp32
    rate on Ampere and later, ~1e-3 relative error) unless GPT124M_TF32=0. Returns whether TF32
    is on. Other devices are left alone.

    Only the long-standing `allow_tf32` switches are used: torch refuses to mix them with its
    newer `fp32_precision` settings, and these two are the ones every torch from 2.4 reads.
    """
    if device.type != "cuda":
        return False
    enabled = os.environ.get(TF32_ENV, "1") != "0"
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU batch to `device`; to CUDA through pinned memory, so the copy is asynchronous
    and the host goes on queueing work instead of waiting for it. A view (`ids[:, :-1]`) is made
    contiguous first: a strided host-to-device copy may go through a pageable temporary, which
    makes the host wait."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA's OutOfMemoryError, or MPS's RuntimeError saying so)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, oom) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def available_host_memory(
    cgroup: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")
) -> int | None:
    """An estimate of the bytes of host memory a new allocation can have: the kernel's
    MemAvailable, or less where a cgroup (a container) caps the process, counting the cgroup's
    inactive page cache as free (the kernel reclaims it: the shards a run reads sit there);
    None where neither can be read."""
    found = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    # cgroup v2's files, then v1's: (limit, usage, stat, the stat's inactive page cache)
    for limit, usage, stat, cache in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        try:
            cap = (cgroup / limit).read_text().strip()
            if cap == "max" or int(cap) >= 2**62:  # v1 writes "no limit" as a huge number
                continue
            used = int((cgroup / usage).read_text()) - _stat(cgroup / stat, cache)
            found.append(int(cap) - max(used, 0))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup's memory.stat; 0 where it cannot be read (the cap still holds)."""
    try:
        stats = dict(line.split() for line in path.read_text().splitlines())
        return int(stats.get(key, 0))
    except (OSError, ValueError):
        return 0
