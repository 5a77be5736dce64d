"""Shared SFT fixtures: a synthetic instruction set, a tiny base model, and one trained run.

The instruction set is "reverse these words" over ten fixed word triples, half with the words in
the instruction and half in the input. The base is the `tiny` preset with its token and position
embeddings scaled up x10: a tied 32-dim model with GPT-2's 0.02 init otherwise spends hundreds of
steps on the unigram plateau before it starts reading its prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.cli import main
from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.sft.data import split

TRIPLES = [
    "red,cat,sun",
    "blue,dog,moon",
    "green,fish,star",
    "pink,bird,rain",
    "gold,frog,snow",
    "grey,wolf,wind",
    "black,bear,tree",
    "white,lion,sea",
    "brown,goat,hill",
    "purple,duck,lake",
]


def reverse(words: str) -> str:
    return ",".join(reversed(words.split(",")))


def reverse_rows() -> list[dict]:
    rows = []
    for i, words in enumerate(TRIPLES):
        if i % 2:
            rows.append(
                {"instruction": "Reverse these words.", "input": words, "output": reverse(words)}
            )
        else:
            rows.append({"instruction": f"Reverse these words: {words}", "output": reverse(words)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def reverse_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "reverse.jsonl", reverse_rows())


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10.0)
        model.transformer.wpe.weight.mul_(10.0)
    return save_pretrained(model, tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="session")
def trained_reverser(tmp_path_factory, tiny_base, reverse_data) -> Path:
    """`gpt124m sft` (full fine-tuning) to near-zero loss on the reversal set: the run dir."""
    out = tmp_path_factory.mktemp("sft") / "reverser"
    # fmt: off
    argv = [
        "sft", "--base", str(tiny_base), "--data", str(reverse_data), "--out", str(out),
        "--pad-to", "longest", "--val-fraction", "0.2", "--batch-size", "4", "--epochs", "50",
        "--max-lr", "1e-2", "--weight-decay", "0", "--schedule", "wsd",
        "--eval-every", "50", "--sample-every", "50", "--sample-prompts", "Reverse these words.",
        "--sample-max-new-tokens", "8", "--checkpoint-every", "0", "--log-every", "25",
        "--peak-flops", "1e12",
    ]
    # fmt: on
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def train_rows() -> list[dict]:
    """The rows `trained_reverser` trained on (the others are its validation split)."""
    rows = reverse_rows()
    train, _ = split(list(range(len(rows))), 0.2, seed=0)
    return [rows[i] for i in train]
