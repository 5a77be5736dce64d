"""The quickstart recipe against the one it replaced, in one run, on the bundled corpus.

Both train the `nano` model on the same prepared data (the corpus bundled with the package) with
the shared loop: the current `quickstart` recipe (Muon on the blocks' matrices, AdamW 4e-2 on
embeddings, norms and biases, 180 steps) and the previous one (AdamW 3e-3 -> 3e-4, 80 steps), each
at the recipe's own precision (`auto`) or `--precision`. Prints each one's training wall time,
validation loss before and after, and how many distinct words 32 greedy tokens of each of the
current recipe's prompts contain (the quickstart test asks for a word in some prompt's greedy
text and >= 3 distinct words in every prompt's sampled text). Both run with huge pages for CPU
tensors, as `gpt124m quickstart` does (THP_MEM_ALLOC_ENABLE=0 in the environment: 4 KB pages).

    python bench/quickstart.py [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from gpt124m.cli import HUGE_PAGES_ENV
from gpt124m.data.prepare import PrepareConfig, prepare
from gpt124m.generate import GenerationConfig, generate_text
from gpt124m.loading import load_model
from gpt124m.tokenizer import get_tokenizer
from gpt124m.train.config import TrainConfig, load_recipe
from gpt124m.train.metrics import MetricsLog
from gpt124m.train.pretrain import pretrain

# The quickstart recipe until 2026-12-05, as the fields that differ from today's.
PREVIOUS = {
    "optimizer": "adamw",
    "max_steps": 80,
    "max_lr": 3e-3,
    "min_lr": 3e-4,
    "warmup_steps": 8,
    "eval_every": 20,
    "val_tokens": 16384,
}


def run(name: str, cfg: TrainConfig, prompts: list[str]) -> dict:
    start = time.perf_counter()
    summary = pretrain(cfg)
    wall = time.perf_counter() - start
    records = MetricsLog(Path(cfg.out_dir) / "metrics.jsonl").read()
    val = [r["loss"] for r in records if r["kind"] == "val"]
    model = load_model(summary["model_dir"])
    greedy = generate_text(model, get_tokenizer(), prompts, GenerationConfig(max_new_tokens=32))
    words = [len(set(re.findall(r"[A-Za-z_]{2,}", text))) for text in greedy]
    return {"name": name, "wall": wall, "val": val, "words": words, "greedy": greedy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default=None, help="override both recipes' precision")
    args = parser.parse_args()
    os.environ.setdefault(HUGE_PAGES_ENV, "1")  # as `gpt124m quickstart` runs; before any tensor
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(PrepareConfig(source="builtin", out_dir=str(data), shard_tokens=1_000_000,
                              val_tokens=65_536, progress=False))  # fmt: skip
        base = TrainConfig(**load_recipe("quickstart"))
        base = dataclasses.replace(base, data_dir=str(data), log_every=0, sample_every=0)
        if args.precision:
            base = dataclasses.replace(base, precision=args.precision)
        prompts = base.sample_prompts
        results = [
            run("quickstart (Muon)", dataclasses.replace(base, out_dir=f"{tmp}/now"), prompts),
            run(
                "previous (AdamW 3e-3, 80 steps)",
                dataclasses.replace(base, out_dir=f"{tmp}/before", **PREVIOUS),
                prompts,
            ),
        ]
    print(f"\nprompts: {prompts}")
    print(f"{'recipe':<34} {'train s':>8} {'val start':>10} {'val end':>8}  greedy words")
    for r in results:
        print(f"{r['name']:<34} {r['wall']:>8.0f} {r['val'][0]:>10.2f} {r['val'][-1]:>8.2f}  "
              f"{r['words']}")  # fmt: skip
    now, before = results
    print(f"\nval loss: {now['val'][-1]:.2f} vs {before['val'][-1]:.2f} "
          f"({before['val'][-1] - now['val'][-1]:.2f} nats lower) in "
          f"{now['wall'] / before['wall']:.2f}x the training time")  # fmt: skip
    for r in results:
        for prompt, text in zip(prompts, r["greedy"], strict=True):
            print(f"{r['name'][:10]:<10} | {prompt}{text!r}")


if __name__ == "__main__":
    main()
