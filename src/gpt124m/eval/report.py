"""HellaSwag results next to published numbers, each labelled with the convention behind it.

Numbers scored under different conventions differ by a few points on the same model, so a table
that leaves the convention out invites the wrong comparison; every row here carries one. A result
computed here also carries its item count and a 95% interval: 20 items put a toy model's 0.30
anywhere between about 0.15 and 0.52, which the bare bar would hide.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Reference:
    model: str
    acc_norm: float
    convention: str  # "completion", "harness" or "paper"
    source: str


REFERENCES: tuple[Reference, ...] = (
    Reference("GPT-2 124M", 0.2955, "completion", "build-nanogpt hellaswag.py, 10,042 items"),
    Reference("GPT-2 124M", 0.3114, "harness", "lm-evaluation-harness, 0-shot"),
    Reference("GPT-3 Small (125M)", 0.337, "paper", "Brown et al. 2020, zero-shot"),
    Reference("Seed GPT-124M", 0.3315, "completion", "the seed model's card"),
)

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile

CONVENTION_COLORS = {"completion": "#4C72B0", "harness": "#DD8452", "paper": "#8C8C8C"}


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    acc_norm: float
    convention: str
    source: str
    ours: bool = False
    acc: float | None = None
    n: int | None = None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of acc_norm, for a result computed here (n known)."""
        if not self.n:
            return None
        return wilson_interval(round(self.acc_norm * self.n), self.n)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: sound for small n and for
    proportions near 0 or 1, where the plain normal interval is not."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # The interval holds p; at 0 and 1 its bound is p itself, which rounding can miss by 1e-17
    # (a negative error bar, which matplotlib refuses).
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def comparison_rows(
    metrics: dict[str, dict], model_name: str, references: Sequence[Reference] = REFERENCES
) -> list[Row]:
    """Our result under each convention, then the references; ours first within a convention."""
    rows = [
        Row(model_name, m["acc_norm"], conv, "this evaluation", True, m["acc"], m["n"])
        for conv, m in metrics.items()
    ]
    rows += [Row(r.model, r.acc_norm, r.convention, r.source) for r in references]
    order = {c: i for i, c in enumerate(CONVENTION_COLORS)}
    return sorted(rows, key=lambda r: (order.get(r.convention, len(order)), not r.ours))


def comparison_table(rows: Sequence[Row]) -> str:
    """A markdown table: model, convention, acc_norm with its 95% interval, acc, items, source."""
    lines = [
        "| model | convention | acc_norm | 95% interval | acc | items | source |",
        "| --- | --- | ---: | :---: | ---: | ---: | --- |",
    ]
    for r in rows:
        name = f"**{r.model}**" if r.ours else r.model
        acc = f"{r.acc:.4f}" if r.acc is not None else ""
        n = f"n = {r.n:,}" if r.n is not None else ""
        ci = f"{r.interval[0]:.3f}–{r.interval[1]:.3f}" if r.interval else ""
        lines.append(
            f"| {name} | {r.convention} | {r.acc_norm:.4f} | {ci} | {acc} | {n} | {r.source} |"
        )
    return "\n".join(lines) + "\n"


def comparison_figure(rows: Sequence[Row], title: str = ""):
    """Horizontal bars of acc_norm, coloured by convention; ours hatched, labelled with their
    item count and drawn with their 95% interval. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = [
        f"{r.model} ({r.convention})" + (f", n = {r.n:,}" if r.n is not None else "") for r in rows
    ]
    values = [r.acc_norm for r in rows]
    fig, ax = plt.subplots(figsize=(9.5, 0.55 * len(rows) + 1.9))
    y = list(range(len(rows)))[::-1]
    bars = ax.barh(
        y,
        values,
        color=[CONVENTION_COLORS.get(r.convention, "#55A868") for r in rows],
        hatch=["//" if r.ours else "" for r in rows],
        edgecolor="black",
        linewidth=0.6,
    )
    highs = list(values)
    for i, (bar, r) in enumerate(zip(bars, rows, strict=True)):
        centre = bar.get_y() + bar.get_height() / 2
        text = f"{r.acc_norm:.4f}"
        if r.interval:
            lo, hi = r.interval
            ax.errorbar(
                r.acc_norm,
                centre,
                xerr=[[r.acc_norm - lo], [hi - r.acc_norm]],
                fmt="none",
                ecolor="black",
                capsize=4,
                gid=f"interval-{i}",
            )
            text += f"  [{lo:.3f}, {hi:.3f}]"
            highs[i] = hi
        ax.text(highs[i] + 0.004, centre, text, va="center")
    ax.axvline(0.25, color="gray", linestyle=":", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max([*highs, 0.25]) * 1.3)
    xlabel = "HellaSwag acc_norm (dotted: chance, 0.25)"
    if any(r.interval for r in rows):
        xlabel += "; error bars: 95% interval over the n items scored"
    ax.set_xlabel(xlabel)
    ax.set_title(title or "HellaSwag: compare within a convention")
    used = dict.fromkeys(r.convention for r in rows)
    ax.legend(
        handles=[Patch(color=CONVENTION_COLORS.get(c, "#55A868"), label=c) for c in used],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="convention",
    )
    fig.tight_layout()
    return fig


def plot_comparison(rows: Sequence[Row], path: str | os.PathLike, title: str = "") -> Path:
    """`comparison_figure` as a PNG, written atomically."""
    from gpt124m.atomic import atomic_save_png

    fig = comparison_figure(rows, title)  # selects the Agg backend before pyplot is imported
    return atomic_save_png(fig, path, dpi=120)
