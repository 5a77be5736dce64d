"""`gpt124m eval hellaswag --precision bf16` predicts what fp32 predicts, on a model decisive enough
for that to mean something: one trained to memorise the correct ending of each item.

A random model's ending scores lie within bf16's rounding of each other, so its predictions
could flip without any bug, and agreeing would prove nothing either; the memorising model wins
every item by a wide margin, so any disagreement is a real one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt124m.checkpoint import save_pretrained
from gpt124m.cli import main
from gpt124m.config import get_preset
from gpt124m.eval import hellaswag as hs
from gpt124m.model import GPT

from .conftest import hellaswag_rows, write_jsonl

N_ITEMS = 8
MARGIN = 0.2  # nats per token by which the correct ending must win in fp32


def memorising_model(items, steps: int = 60) -> GPT:
    """The tiny model trained on each item's correct ending (context + ending, as each convention
    scores it). The softmax runs over the few tokens these texts use, not all 50,257: far
    cheaper, and the untrained rows of the vocabulary stay far below the trained ones."""
    seqs = [
        e.rows[e.label]
        for convention in hs.CONVENTIONS
        for e in hs.encode_items(items, convention, block_size=64)
    ]
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros((len(seqs), T), dtype=torch.long)
    y = torch.full((len(seqs), T), -100)
    for i, s in enumerate(seqs):
        x[i, : len(s) - 1] = torch.tensor(s[:-1])
        y[i, : len(s) - 1] = torch.tensor(s[1:])
    used = torch.unique(torch.cat([x.flatten(), y[y >= 0]]))
    position = torch.full((get_preset("tiny").vocab_size,), -100)
    position[used] = torch.arange(len(used))
    targets = torch.where(y >= 0, position[y.clamp(min=0)], -100)
    torch.manual_seed(0)
    model = GPT(get_preset("tiny")).train()
    hidden = {}
    model.transformer.ln_f.register_forward_hook(lambda m, i, out: hidden.update(h=out))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Matrices this small gain nothing from threads, and on a busy host the threads spin-wait
    # for each other (8x the CPU time on a loaded 2-core machine): train on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            model(x, last_only=True)  # the full-vocabulary head only for the last position
            logits = hidden["h"] @ model.transformer.wte.weight[used].T
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def decisive(tmp_path_factory):
    root = tmp_path_factory.mktemp("decisive")
    data = write_jsonl(root / "hellaswag.jsonl", hellaswag_rows(N_ITEMS))
    model = memorising_model(hs.load_items(data))
    return save_pretrained(model, root / "model"), data


def run_eval(tmp_path, model_dir, data, precision) -> list[dict]:
    out = tmp_path / precision
    argv = ["eval", "hellaswag", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--precision", precision, "--batch-size", "3"]) == 0
    summary = json.loads((out / "hellaswag.json").read_text())
    assert summary["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    lines = (out / "hellaswag_predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_bf16_predictions_equal_fp32_on_a_decisive_model(tmp_path, decisive):
    model_dir, data = decisive
    fp32 = run_eval(tmp_path, model_dir, data, "fp32")
    bf16 = run_eval(tmp_path, model_dir, data, "bf16")
    # Precondition: the model is right about every item, by a wide margin per token.
    for record in fp32:
        loss_mean = np.array(record["completion"]["loss_mean"])
        label = record["label"]
        assert record["completion"]["pred_norm"] == record["harness"]["pred_norm"] == label
        assert np.delete(loss_mean, label).min() - loss_mean[label] > MARGIN
    for a, b in zip(fp32, bf16, strict=True):
        assert a["ind"] == b["ind"]
        for convention, score in (("completion", "loss_mean"), ("harness", "logprob_per_char")):
            assert (a[convention]["pred"], a[convention]["pred_norm"]) == (
                b[convention]["pred"],
                b[convention]["pred_norm"],
            )
            # bf16 rounds each op to 8 significant bits (~4e-3 relative); the per-token losses
            # are sums of log-softmaxes computed from bf16 logits, so allow 2e-2 relative plus
            # 0.02 nats for the small ones. That is still well inside MARGIN.
            np.testing.assert_allclose(b[convention][score], a[convention][score], 2e-2, 2e-2)
    scores = (
        [r["completion"]["loss_sum"] for r in fp32],
        [r["completion"]["loss_sum"] for r in bf16],
    )
    assert scores[0] != scores[1], "--precision bf16 changed no rounding: it did not run in bf16"
