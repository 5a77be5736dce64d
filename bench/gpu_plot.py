"""The GPU report as a picture: training tokens/s by implementation (with the issue's target)
and decode tokens/s by batch size, ours against transformers.

bench/gpu.py draws `gpu.png` beside `gpu.json` at the end of its run; a run cut short still leaves
`gpu.json`, from which this redraws it:

    python bench/gpu_plot.py results/gpu/gpu.json        # writes results/gpu/gpu.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_TARGET = 550_000  # tokens/s, the target for the compiled fit() loop


def _tables(report: dict, section: str) -> dict:
    return report.get("sections", {}).get(section, {}).get("results", {}).get("tables", {})


def _decode_series(report: dict) -> dict[str, dict[int, float]]:
    """tokens/s by batch for each decoder: gpt124m eager and compiled, transformers."""
    series: dict[str, dict[int, float]] = {}
    tables = {**_tables(report, "decode"), **_tables(report, "decode_compiled")}
    for title, rows in tables.items():
        for row in rows:
            batch = row["batch"]
            if title.startswith("greedy decode compiled"):
                series.setdefault("gpt124m compiled", {})[batch] = row["compiled tok/s"]
            elif title.startswith("greedy decode"):
                series.setdefault("gpt124m", {})[batch] = row["gpt124m tok/s"]
                series.setdefault("transformers generate", {})[batch] = row["transformers tok/s"]
    return series


def figure(report: dict):
    """A matplotlib figure of the report's throughput and decode rows; None if it has neither."""
    train = _tables(report, "throughput").get("training step", [])
    decode = _decode_series(report)
    if not train and not decode:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("train", "decode") if (train if p == "train" else decode)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    meta = report.get("meta", {})
    fig.suptitle(
        f"{meta.get('device', '?')}, torch {meta.get('torch', '?')}, {meta.get('date', '')[:10]}"
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "train":
            names = [r["implementation"] for r in train]
            rates = [r["tokens/s"] for r in train]
            colors = ["tab:blue" if n.startswith("gpt124m") else "tab:gray" for n in names]
            ax.barh(names, rates, color=colors)
            ax.invert_yaxis()
            if not meta.get("smoke"):
                ax.axvline(TRAIN_TARGET, color="tab:red", ls="--", lw=1, label="target")
                ax.legend(loc="lower right")
            for y, rate in enumerate(rates):
                ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
            right = max(rates + ([] if meta.get("smoke") else [TRAIN_TARGET]))
            ax.set_xlim(0, right * 1.18)  # room for the figures
            ax.set_xlabel("training tokens/s (bf16)")
            shape = report["sections"]["throughput"]["results"].get("shape", {})
            ax.set_title(f"{shape.get('preset', '')} training, B={shape.get('batch')}, "
                         f"T={shape.get('seq')}")  # fmt: skip
        else:
            for name, points in decode.items():
                batches = sorted(points)
                style = "s--" if name.startswith("transformers") else "o-"
                ax.plot(batches, [points[b] for b in batches], style, label=name)
            every = sorted({b for points in decode.values() for b in points})
            ax.set_xscale("log", base=2)
            ax.set_xticks(every, [str(b) for b in every])
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel("new tokens/s (greedy)")
            ax.set_title("decode")
            ax.legend()
    fig.tight_layout()
    return fig


def save(report: dict, path: Path) -> Path | None:
    """Write the figure as PNG (atomically); None when the report has nothing to draw."""
    from gpt124m.atomic import atomic_save_png

    fig = figure(report)  # selects the Agg backend before pyplot is imported
    return None if fig is None else atomic_save_png(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="gpu.json written by bench/gpu.py")
    p.add_argument("--out", help="PNG to write (default: gpu.png beside the report)")
    args = p.parse_args()
    source = Path(args.report)
    try:
        report = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        print(f"gpu_plot.py: error: cannot read {source}: {e}", file=sys.stderr)
        return 2
    out = save(report, Path(args.out) if args.out else source.with_name("gpu.png"))
    print(out or "nothing to draw: the report has no throughput or decode rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
