"""HellaSwag results next to published numbers, each labelled with the convention behind it.

Numbers scored under different conventions differ by a few points on the same model, so a table
that leaves the convention out invites the wrong comparison; every row here carries one.
"""

from __future__ import annotations

import dataclasses
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
    """A markdown table: model, convention, acc_norm, acc, items, source."""
    lines = [
        "| model | convention | acc_norm | acc | items | source |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        name = f"**{r.model}**" if r.ours else r.model
        acc = f"{r.acc:.4f}" if r.acc is not None else ""
        n = f"{r.n:,}" if r.n is not None else ""
        lines.append(f"| {name} | {r.convention} | {r.acc_norm:.4f} | {acc} | {n} | {r.source} |")
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[Row], path: str | os.PathLike, title: str = "") -> Path:
    """Horizontal bars of acc_norm, coloured by convention; ours hatched. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from gpt124m.atomic import atomic_path

    labels = [f"{r.model} ({r.convention})" for r in rows]
    values = [r.acc_norm for r in rows]
    fig, ax = plt.subplots(figsize=(9.5, 0.55 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    bars = ax.barh(
        y,
        values,
        color=[CONVENTION_COLORS.get(r.convention, "#55A868") for r in rows],
        hatch=["//" if r.ours else "" for r in rows],
        edgecolor="black",
        linewidth=0.6,
    )
    for bar, v in zip(bars, values, strict=True):
        ax.text(v + 0.003, bar.get_y() + bar.get_height() / 2, f"{v:.4f}", va="center")
    ax.axvline(0.25, color="gray", linestyle=":", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max([*values, 0.25]) * 1.18)
    ax.set_xlabel("HellaSwag acc_norm (dotted: chance, 0.25)")
    ax.set_title(title or "HellaSwag: compare within a convention")
    used = dict.fromkeys(r.convention for r in rows)
    ax.legend(
        handles=[Patch(color=CONVENTION_COLORS.get(c, "#55A868"), label=c) for c in used],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="convention",
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
