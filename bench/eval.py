"""Benchmark HellaSwag scoring: our batched path against scoring one ending at a time.

Builds synthetic items in the HellaSwag layout (the real data needs the network) with lengths
like the validation split's (contexts of 20-100 tokens, endings of 10-45), takes the `gpt2`
preset (124M, random weights: speed does not depend on them) and, in the same run, times
1. `score_items` (right-padded batches of `--batch-size` items, 4 rows each, longest first) and
2. the baseline: one forward pass per (context, ending) row, no padding at all.
Prints items/s for both, the ratio, and how far the two paths' scores differ.

    .venv/bin/python bench/eval.py [--items 32] [--baseline-items 8] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

VOCABULARY = (
    "the a man woman dog kids chef then he she they is are was were walks runs jumps holds "
    "picks up puts down opens closes looks at smiles talks to camera ball bowl kitchen field "
    "water table knife paper hair brush car street wall paint slowly quickly again after before "
    "while and with on in of to from into over under around next another small large red green "
    "blue young old first finally shows how demonstrates cleans cuts mixes pours throws catches"
)


def synthetic_items(n: int, seed: int = 0):
    from gpt124m.eval.hellaswag import HellaSwagItem

    rng = random.Random(seed)
    vocabulary = VOCABULARY.split()

    def words(lo, hi):
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(lo, hi)))

    items = []
    for i in range(n):
        ctx_a, ctx_b = words(15, 80) + ".", words(3, 15)
        items.append(
            HellaSwagItem(
                ind=i,
                activity_label=words(1, 3).capitalize(),
                ctx_a=ctx_a,
                ctx_b=ctx_b,
                ctx=f"{ctx_a} {ctx_b}",
                endings=tuple(words(8, 40) + "." for _ in range(4)),
                label=rng.randrange(4),
            )
        )
    return items


def one_ending_at_a_time(model, encoded):
    """The baseline: each (context, ending) row alone, summed log-probability of the ending."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for e in encoded:
            row_scores = []
            for row, n in zip(e.rows, e.n_scored, strict=True):
                logits, _ = model(torch.tensor([row[:-1]]))
                logprobs = F.log_softmax(logits[0, -n:].float(), dim=-1)
                target = torch.tensor(row[-n:])
                row_scores.append(logprobs.gather(1, target[:, None]).sum().item())
            out.append(row_scores)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=32, help="items for the batched path")
    p.add_argument("--baseline-items", type=int, default=8, help="items for the baseline")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--rounds", type=int, default=2, help="alternate the two paths, so load shifts hit both"
    )
    p.add_argument("--preset", default="gpt2")
    args = p.parse_args()

    import numpy as np
    import torch

    from gpt124m.config import get_preset
    from gpt124m.eval.hellaswag import encode_items
    from gpt124m.eval.multiple_choice import score_items
    from gpt124m.model import GPT

    torch.manual_seed(0)
    model = GPT(get_preset(args.preset)).eval()
    items = synthetic_items(max(args.items, args.baseline_items))
    encoded = encode_items(items, "completion", block_size=model.config.block_size)
    rows = [len(e.context) + n for e in encoded for n in e.n_scored]
    print(
        f"model: {args.preset} ({model.num_params() / 1e6:.0f}M params, fp32, CPU, "
        f"{torch.get_num_threads()} threads); {os.cpu_count()} CPUs; torch {torch.__version__}; "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"items: synthetic, 4 endings each; context + ending mean {np.mean(rows):.0f} tokens "
        f"(min {min(rows)}, max {max(rows)})"
    )
    with torch.no_grad():  # warm-up
        model(torch.zeros((1, 8), dtype=torch.long))

    batched_s = base_s = 0.0
    tables, bases = [], []
    per_round = args.items // args.rounds, args.baseline_items // args.rounds
    for r in range(args.rounds):
        chunk = encoded[r * per_round[0] : (r + 1) * per_round[0]]
        start = time.perf_counter()
        tables.append(score_items(model, chunk, batch_size=args.batch_size, progress=False))
        batched_s += time.perf_counter() - start
        chunk = encoded[r * per_round[1] : (r + 1) * per_round[1]]
        start = time.perf_counter()
        bases.append(np.array(one_ending_at_a_time(model, chunk)))
        base_s += time.perf_counter() - start
    n_batched, n_base = per_round[0] * args.rounds, per_round[1] * args.rounds
    batched_rate, base_rate = n_batched / batched_s, n_base / base_s

    # both paths walked the items from the start: compare the baseline's items
    table, base = np.concatenate(tables)[:n_base], np.concatenate(bases)
    diff = np.abs(table - base).max()
    same = (table.argmax(1) == base.argmax(1)).all()
    print(
        f"batched (batch {args.batch_size} items): {batched_rate:.2f} items/s "
        f"({n_batched} items in {batched_s:.1f} s)"
    )
    print(
        f"one ending at a time (baseline): {base_rate:.3f} items/s "
        f"({n_base} items in {base_s:.1f} s)"
    )
    print(f"speed-up: {batched_rate / base_rate:.1f}x")
    print(f"scores: max |batched - baseline| = {diff:.2e} nats; same predictions: {bool(same)}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
