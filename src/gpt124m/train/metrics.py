"""What a run reports: console lines, a metrics JSONL, the curves plot, MFU and the run summary."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from gpt124m.atomic import atomic_path

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device: (bf16/fp16 tensor cores, tf32 tensor cores). Matched against
# torch.cuda.get_device_name by the longest key it contains ("L40S" before "L40" before "L4").
GPU_PEAK_FLOPS = {
    "B200": (2250e12, 1100e12),
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
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


def measured_cpu_peak(dtype: torch.dtype, repeats: int = 10) -> float:
    """Best observed matmul FLOP/s on this CPU in `dtype`: the honest MFU denominator here.

    The fastest of several single timings, so a scheduler hiccup cannot make the peak look low
    (which would push MFU past 100%).
    """
    if dtype not in _cpu_peak_cache:
        n = 1024
        g = torch.Generator().manual_seed(0)  # never touch the global RNG: exact resume needs it
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        a @ b  # warm up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _cpu_peak_cache[dtype] = 2 * n**3 / best
    return _cpu_peak_cache[dtype]


def _gpu_entry(table: dict, device: torch.device):
    """The entry of the longest key within the device's name, or None."""
    name = torch.cuda.get_device_name(device)
    matches = [key for key in table if key in name]
    return table[max(matches, key=len)] if matches else None


def peak_flops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> float:
    if override:
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
    if override:
        return override
    if device.type == "cuda":
        return float(_gpu_entry(DEVICE_POWER_W, device) or DEFAULT_GPU_POWER_W)
    return CPU_POWER_W


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsLog:
    """Append-only JSONL of every event, readable while the run goes on."""

    def __init__(self, path: Path, enabled: bool = True, trackers: list | None = None):
        self.path = path
        self.enabled = enabled
        self.trackers = trackers or []

    def truncate_after(self, step: int) -> None:
        """On resume, drop events a killed run logged after its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def start_afresh(self) -> None:
        """A fresh run keeps no events of an earlier one (killed before its first checkpoint);
        the old log stays beside it as `*.previous.jsonl`."""
        if self.enabled and self.path.exists():
            self.path.replace(self.path.with_suffix(".previous.jsonl"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

    def read(self) -> list[dict[str, Any]]:
        """Every event; a line torn by a crash mid-write is skipped with a warning."""
        if not self.path.exists():
            return []
        records = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("%s:%d: skipping an unreadable line (torn write?)", self.path, number)
        return records


def human_count(x: float, _pos: object = None) -> str:
    """A tick label for a count: 0, 950, 150k, 1.2M, 10B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` points (odd), narrower at the ends: a trend with no
    lag, for drawing over the raw, noisy training loss."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def curves_figure(records: list[dict[str, Any]], title: str = ""):
    """Train loss (raw, and smoothed over ~1/25 of the run), val loss and (if present)
    HellaSwag acc_norm against tokens seen; None when there is nothing to draw."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "val"]
    hella = [(r["tokens"], r["acc_norm"]) for r in records if r.get("kind") == "hellaswag"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ncols = 2 if hella else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    ax = axes[0][0]
    if train:
        xs, ys = zip(*train, strict=True)
        window = len(ys) // 25 * 2 + 1
        if window > 1:
            ax.plot(xs, ys, lw=0.6, alpha=0.3, color="tab:blue", label="train")
            ax.plot(xs, smooth(list(ys), window), lw=1.6, color="tab:blue",
                    label=f"train, smoothed ({window} steps)")  # fmt: skip
        else:
            ax.plot(xs, ys, lw=0.8, alpha=0.7, color="tab:blue", label="train")
    if val:
        xs, ys = zip(*val, strict=True)
        ax.plot(xs, ys, "o-", ms=3, color="tab:orange", label="val")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.set_title(title or "loss")
    if hella:
        ax = axes[0][1]
        xs, ys = zip(*hella, strict=True)
        ax.plot(xs, ys, "o-", ms=3, color="tab:green", label="ours (completion)")
        for value, label, style in ((0.2955, "GPT-2 124M", "--"), (0.337, "GPT-3 Small", ":")):
            ax.axhline(value, ls=style, color="gray", lw=1)
            ax.annotate(label, (xs[0], value), fontsize=8, va="bottom")
        ax.set_ylabel("HellaSwag acc_norm")
        ax.set_title("HellaSwag")
    for ax in axes[0]:
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(FuncFormatter(human_count))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(records: list[dict[str, Any]], out_path: Path, title: str = "") -> Path | None:
    """`curves_figure` as a PNG, written atomically; None when there is nothing to draw."""
    fig = curves_figure(records, title)  # selects the Agg backend before pyplot is imported
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_path


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
