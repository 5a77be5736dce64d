"""The Muon recipe against the seed's, on a small fixed offline setup.

Both train the `nano` model (4 layers, 4 heads, 128 dims) with `gpt124m train`'s library entry
point on tiny Shakespeare (GPT-2 BPE, first 90% of the characters to train, last 10% to
validate), for the same token budget, batch, warmup + cosine schedule to 10% and clipping, in
fp32. The seed's recipe is AdamW (0.9, 0.95, weight decay 0.1); the Muon recipe is
`--optimizer muon`: Muon on the blocks' matrices, AdamW (as the seed's) on embeddings, norms and
biases. Each recipe's learning rates come from a small sweep on seed 0 (the Muon recipe's: its
Muon LR by its AdamW LR, which defaults to the seed recipe's best); the best of each then runs a
second seed. Prints the sweep, both
validation curves, and the tokens the Muon recipe needs to reach the seed recipe's final
validation loss (mean of the seeds' curves, interpolated between evaluations); plots the curves.

    python bench/recipe.py [--steps 300] [--adamw-lrs 5e-4 1e-3 2e-3 4e-3]
                           [--muon-lrs 0.005 0.01 0.02 0.04] [--muon-adamw-lrs 1e-3 1e-2]
                           [--work DIR]

`--work DIR` keeps the prepared data and every run; a finished run there is read back, not
trained again, so a wider sweep only trains what is new.

Skips (exit 0) when the text file is absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _shakespeare import DEFAULT_TEXT, prepare_shakespeare

from gpt124m.train.config import TrainConfig
from gpt124m.train.pretrain import pretrain

BATCH, SEQ = 8, 128
EVALS = 10
DOCS = Path(__file__).resolve().parents[1] / "docs"


def read_curve(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["tokens"], r["loss"]) for r in records if r["kind"] == "val"]


def run(data: Path, out: Path, steps: int, seed: int, **optim) -> list[tuple[int, float]]:
    """One training run; its validation curve as (tokens, loss). A finished run of the same
    name in `--work` is read back instead of trained again."""
    if (out / "metrics.jsonl").is_file():
        curve = read_curve(out)
        if curve and curve[-1][0] == steps * BATCH * SEQ:
            return curve
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        model="nano",
        data_dir=str(data),
        out_dir=str(out),
        seq_len=SEQ,
        micro_batch_size=BATCH,
        total_batch_tokens=BATCH * SEQ,
        max_steps=steps,
        seed=seed,
        warmup_steps=max(1, steps // 20),
        schedule="cosine",
        weight_decay=0.1,
        grad_clip=1.0,
        precision="fp32",
        log_every=0,
        eval_every=max(1, steps // EVALS),
        val_tokens=16 * BATCH * SEQ,
        sample_every=0,
        checkpoint_every=0,
        **optim,
    )
    cfg.min_lr = cfg.max_lr / 10
    pretrain(cfg)
    return read_curve(out)


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the curve first reaches `target`, linear between evaluations."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:], strict=False):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
    return None


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    return [(t, float(np.mean([c[i][1] for c in curves]))) for i, (t, _) in enumerate(curves[0])]


def plot(curves: dict[str, list], target: float, reach: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"seed recipe (AdamW)": "tab:blue", "Muon recipe": "tab:red"}
    for label, runs in curves.items():
        for i, curve in enumerate(runs):
            tokens, losses = zip(*curve[1:], strict=True)
            ax.plot(
                np.array(tokens) / 1e3,
                losses,
                color=colours[label],
                alpha=0.9 if i == 0 else 0.5,
                label=label if i == 0 else None,
            )
    ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"seed recipe's final {target:.3f}")
    if reach is not None:
        ax.axvline(reach / 1e3, color="tab:red", lw=0.8, ls=":")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("validation loss")
    ax.set_title("nano on tiny Shakespeare: seed recipe vs Muon (2 seeds each)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--muon-lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04])
    parser.add_argument(
        "--muon-adamw-lrs",
        type=float,
        nargs="+",
        help="the Muon recipe's AdamW LRs to sweep (default: the seed recipe's best)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--plot", type=Path, default=DOCS / "muon-recipe.png")
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: temp)")
    args = parser.parse_args()
    if not args.text.is_file():
        print(f"skipped: {args.text} not found (pass --text PATH to tiny Shakespeare)")
        return 0
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="recipe-"))
    data = prepare_shakespeare(args.text, work)
    budget = args.steps * BATCH * SEQ
    print(f"nano, tiny Shakespeare, {args.steps} steps of {BATCH}x{SEQ} = {budget:,} tokens\n")
    start = time.perf_counter()
    first, rest = args.seeds[0], args.seeds[1:]

    def sweep(settings: dict[str, dict]) -> tuple[str, list]:
        """Each named setting on the first seed; the best one again on the other seeds."""
        finals = {}
        for name, optim in settings.items():
            finals[name] = run(data, work / f"{name}-s{first}", args.steps, first, **optim)
            print(f"  {name:<22} seed {first}: final val {finals[name][-1][1]:.4f}")
        best = min(finals, key=lambda name: finals[name][-1][1])
        curves = [finals[best]]
        for seed in rest:
            curves.append(run(data, work / f"{best}-s{seed}", args.steps, seed, **settings[best]))
        return best, curves

    print("sweep (final validation loss):")
    adamw_runs = {f"adamw-{lr:g}": {"max_lr": lr} for lr in args.adamw_lrs}
    adamw_best, adamw = sweep(adamw_runs)
    adamw_lr = adamw_runs[adamw_best]["max_lr"]
    muon_runs = {
        f"muon-{m:g}-a{a:g}": {"optimizer": "muon", "muon_lr": m, "max_lr": a}
        for m in args.muon_lrs
        for a in args.muon_adamw_lrs or [adamw_lr]
    }
    muon_best, muon = sweep(muon_runs)
    best = muon_runs[muon_best]
    a, m = mean_curve(adamw), mean_curve(muon)
    print(
        f"\nbest: seed recipe AdamW max_lr {adamw_lr:g}; Muon recipe muon_lr {best['muon_lr']:g} "
        f"with AdamW max_lr {best['max_lr']:g} on embeddings, norms and biases"
    )
    print(f"validation loss, mean of seeds {args.seeds}:")
    print(f"{'tokens':>9} {'seed recipe':>12} {'Muon':>8}")
    for (tokens, la), (_, lm) in zip(a, m, strict=True):
        print(f"{tokens:>9,} {la:>12.4f} {lm:>8.4f}")
    target = a[-1][1]
    reach = tokens_to_reach(m, target)
    if reach is None:
        print(f"\nMuon did not reach the seed recipe's final {target:.4f} within {budget:,} tokens")
    else:
        print(
            f"\nMuon reaches the seed recipe's final {target:.4f} after {reach:,.0f} tokens: ",
            end="",
        )
        print(f"{reach / budget:.2f} of the seed recipe's {budget:,}")
    print(f"(wall {time.perf_counter() - start:.0f} s)")
    plot({"seed recipe (AdamW)": adamw, "Muon recipe": muon}, target, reach, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
