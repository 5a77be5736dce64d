"""What a run records: the metrics JSONL (every event, readable while the run goes on) and the
curves plot drawn from it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from gpt124m.atomic import atomic_path, atomic_save_png

log = logging.getLogger(__name__)


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
    return atomic_save_png(fig, out_path)
