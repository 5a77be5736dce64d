"""The arithmetic behind a run's cost figures: peak FLOP/s (for MFU), board power and the energy
and CO2 estimate, and the step clock that times training steps without a sync per step."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device: (bf16/fp16 tensor cores, tf32 tensor cores). Matched against
# torch.cuda.get_device_name by the longest key it contains ("L40S" before "L40" before "L4").
GPU_PEAK_FLOPS = {
    "B200": (2250e12, 1100e12),
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
    "H100 NVL": (835e12, 418e12),
    "A100": (312e12, 156e12),
    "A10G": (125e12, 62.5e12),
    "A10": (125e12, 62.5e12),
    "L40S": (362e12, 183e12),
    "L40": (181e12, 90.5e12),
    "L4": (121e12, 60e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}
# Typical board power in watts, for the energy estimate when --power-watts is not given.
DEVICE_POWER_W = {
    "B200": 1000,
    "H200": 700,
    "H100": 700,
    "H100 PCIe": 350,
    "H100 NVL": 400,
    "A100": 400,
    "A10G": 300,
    "A10": 150,
    "L40S": 350,
    "L40": 300,
    "L4": 72,
    "RTX 4090": 450,
    "RTX 3090": 350,
    "V100": 300,
    "T4": 70,
}
CPU_POWER_W = 65.0
DEFAULT_GPU_POWER_W = 300.0

_cpu_peak_cache: dict[torch.dtype, float] = {}


def measured_cpu_peak(
    dtype: torch.dtype, repeats: int = 40, budget_s: float = 0.5, clock=time.perf_counter
) -> float:
    """Best observed matmul FLOP/s on this CPU in `dtype`: the honest MFU denominator here.

    The fastest of several single timings, so a scheduler hiccup cannot make the peak look low
    (which would push MFU past 100%): on a shared 2-core VM the best of 10 fp32 timings ranged
    97-125 GFLOP/s, the best of 40 (0.6 s) 132-157. Timings stop once `budget_s` is spent (after
    at least one): where bf16 or fp16 is emulated one matmul takes seconds (2.2 s on a 2-core
    AVX2 CPU), and ten of them held every such run's start for 25 s.
    """
    if dtype not in _cpu_peak_cache:
        n = 1024
        g = torch.Generator().manual_seed(0)  # never touch the global RNG: exact resume needs it
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        a @ b  # warm up
        best, spent = float("inf"), 0.0
        for _ in range(repeats):
            start = clock()
            a @ b
            took = clock() - start
            best, spent = min(best, took), spent + took
            if spent >= budget_s:
                break
        _cpu_peak_cache[dtype] = 2 * n**3 / best
    return _cpu_peak_cache[dtype]


def _gpu_entry(table: dict, device: torch.device):
    """The entry of the longest key within the device's name, or None."""
    name = torch.cuda.get_device_name(device)
    matches = [key for key in table if key in name]
    return table[max(matches, key=len)] if matches else None


def peak_flops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> float:
    if override is not None:
        return override
    if device.type == "cuda":
        entry = _gpu_entry(GPU_PEAK_FLOPS, device)
        if entry:
            return entry[0] if dtype in (torch.bfloat16, torch.float16) else entry[1]
        log.warning(
            "unknown GPU %s: MFU uses 312 TFLOP/s; set --peak-flops",
            torch.cuda.get_device_name(device),
        )
        return 312e12
    if device.type == "cpu":
        return measured_cpu_peak(dtype)
    return float("nan")


def device_power_watts(device: torch.device, override: float | None = None) -> float:
    if override is not None:  # 0 too: what was asked for
        return override
    if device.type == "cuda":
        return float(_gpu_entry(DEVICE_POWER_W, device) or DEFAULT_GPU_POWER_W)
    return CPU_POWER_W


def training_flops_per_token(model: torch.nn.Module, config, seq_len: int) -> float:
    """FLOPs per trained token for MFU: `config.flops_per_token` (6N + attention) when every
    weight trains. A frozen weight matrix still runs forward (2 FLOPs per parameter) and passes
    gradients back (2) but makes no gradient of its own (the other 2), and parameters beyond the
    base model's (LoRA adapters) cost the full 6: a LoRA run is about 4N per token, not 6N."""
    frozen = sum(
        p.numel()
        for name, p in model.named_parameters()
        if not p.requires_grad and p.dim() == 2 and not name.endswith("wpe.weight")  # a lookup
    )
    extra = max(sum(p.numel() for p in model.parameters()) - config.num_params(), 0)
    return config.flops_per_token(seq_len) - 2 * frozen + 6 * extra


def run_summary(
    *,
    tokens_seen: int,
    steps: int,
    wall_time_s: float,
    device: torch.device,
    world_size: int,
    power_watts: float,
    grid_gco2_per_kwh: float,
) -> dict[str, Any]:
    """Tokens, time and the energy / CO2 estimate (device-hours x power x grid intensity)."""
    device_hours = wall_time_s / 3600 * world_size
    energy_kwh = device_hours * power_watts / 1000
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "tokens_seen": tokens_seen,
        "steps": steps,
        "wall_time_s": round(wall_time_s, 2),
        "device": name,
        "world_size": world_size,
        "device_hours": round(device_hours, 6),
        "power_w": power_watts,
        "energy_kwh": round(energy_kwh, 6),
        "grid_gco2_per_kwh": grid_gco2_per_kwh,
        "co2_kg": round(energy_kwh * grid_gco2_per_kwh / 1000, 6),
    }


class StepClock:
    """Mean seconds per training step since the last report, without a sync per step: the
    clock runs while steps are queued and stops (after waiting for the device) for logging and
    periodic work, so evaluation and checkpoints never count as step time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.busy, self.steps = 0.0, 0
        self.mark: float | None = time.perf_counter()

    def count_step(self) -> None:
        self.steps += 1

    def pause(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.busy += time.perf_counter() - self.mark
        self.mark = None

    def resume(self) -> None:
        self.mark = time.perf_counter()

    def take_step_time(self) -> float:
        dt = self.busy / max(self.steps, 1)
        self.busy, self.steps = 0.0, 0
        return dt
