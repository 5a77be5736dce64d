"""Our numbers equal transformers' on a GPT-2 whose logits sit far below zero, as trained ones do.

A random GPT-2 predicts with logits near 0, where a padding row with logit 0 barely moves a
softmax; a trained GPT-2's logits are around -30 to -100, where such a row would take almost
all the mass. So the reference model here is shifted: every token embedding gets a shared
direction and `ln_f.bias` points against it, which pushes every logit to about -40.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gpt124m.eval.hellaswag import HellaSwagItem, encode_items, evaluate
from gpt124m.loading import load_for_training, load_model
from gpt124m.tokenizer import get_tokenizer
from gpt124m.train.trainer import fit

transformers = pytest.importorskip("transformers")

N_POS = 96


@pytest.fixture(scope="module")
def hf_model(wide_gpt2):
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POS)
    torch.manual_seed(0)
    model = wide_gpt2(transformers.GPT2LMHeadModel(config), seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        direction = torch.randn(32, generator=g)
        direction /= direction.norm()
        model.transformer.wte.weight += 4.0 * direction
        model.transformer.ln_f.bias -= 10.0 * direction
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("shifted") / "gpt2"
    hf_model.save_pretrained(out)
    return out


def hf_token_loss(hf_model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy from transformers' logits (targets -100 give 0), [B, T]."""
    with torch.no_grad():
        logits = hf_model(x).logits.float()
    return F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")


def test_logits_look_trained_and_our_loss_is_transformers(hf_model, hf_dir):
    x = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf_model(x).logits
    assert theirs.max() < -15 and theirs.mean() < -30  # precondition: like a trained GPT-2
    ours = load_model(hf_dir)
    with torch.no_grad():
        logits, loss = ours(x, y)
    assert logits.shape == theirs.shape
    torch.testing.assert_close(logits, theirs, atol=1e-4, rtol=0)
    expected = hf_token_loss(hf_model, x, y).mean()
    assert abs(loss.item() - expected.item()) < 1e-4
    assert 5 < expected.item() < 20  # a real loss, not ~40 from padding rows taking the mass


def test_eval_loss_cli_is_transformers(hf_model, hf_dir, tmp_path):
    tok = get_tokenizer()
    text = " ".join(
        f"Sentence {i} tells of the river, the hill and {i * 7} trees." for i in range(60)
    )
    (tmp_path / "text.txt").write_text(text)
    ids = torch.tensor(tok.encode(text))
    T, B = 32, 2
    n = (len(ids) - 1) // (B * T) * (B * T)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gpt124m", "eval", "loss", "--model", str(hf_dir)]
    cmd += ["--data", str(tmp_path / "text.txt"), "--seq-len", str(T), "--batch-size", str(B)]
    cmd += ["--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "out" / "loss.json").read_text())
    x, y = ids[:n].view(-1, T), ids[1 : n + 1].view(-1, T)
    expected = hf_token_loss(hf_model, x, y).mean().item()
    assert got["tokens"] == n
    assert abs(got["loss"] - expected) < 1e-4


def hellaswag_items(n: int = 50) -> list[HellaSwagItem]:
    """HellaSwag-layout items with WikiHow brackets and endings of varied lengths."""
    subjects = ["A man", "The girl", "Two dogs", "A chef", "The old farmer", "Kids"]
    verbs = ["walks to a lake", "opens a box", "climbs the ladder", "cuts an onion"]
    items = []
    for i in range(n):
        ctx_a = f"{subjects[i % 6]} {verbs[i % 4]}." + " The sun is out." * (i % 3)
        ctx_b = "then" if i % 2 else "[header] she slowly"
        endings = (
            "picks up a red apple and eats it.",
            "jumps [title] over the  fence" + " again" * (i % 4) + ".",
            "sings.",
            f"[step] looks at the {i} cameras and smiles while people cheer.",
        )
        items.append(
            HellaSwagItem(i, "Cooking", ctx_a, ctx_b, f"{ctx_a} {ctx_b}", endings, i % 4, f"#{i}")
        )
    return items


@pytest.mark.parametrize("convention", ["completion", "harness"])
def test_hellaswag_loglikelihoods_are_transformers(hf_model, hf_dir, convention):
    items = hellaswag_items()
    ours = evaluate(
        load_model(hf_dir), items, conventions=(convention,), batch_size=7, progress=False
    )
    encoded = encode_items(items, convention, block_size=N_POS)
    for enc, record in zip(encoded, ours.records, strict=True):
        expected = []
        for ending in enc.endings:
            row = torch.tensor([(enc.context + ending)[-(N_POS + 1) :]])
            with torch.no_grad():
                logp = hf_model(row[:, :-1]).logits.float().log_softmax(-1)
            targets = row[0, 1:]
            per_token = logp[0].gather(-1, targets[:, None])[:, 0]
            expected.append(per_token[-len(ending) :].sum().item())
        detail = record[convention]
        got = detail["logprob"] if convention == "harness" else [-v for v in detail["loss_sum"]]
        assert got == pytest.approx(expected, abs=2e-3)


class OneBatch:
    def __init__(self, x, y):
        self.x, self.y, self.i = x, y, 0

    def next_batch(self):
        self.i += 1
        return self.x, self.y

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def _first_logged_loss(run_dir) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if r.get("kind") == "train")


def test_pretraining_from_the_base_starts_at_transformers_loss(
    hf_model, hf_dir, tmp_path, run_config
):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 50257, (2, 25), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    cfg = run_config(tmp_path, seq_len=24, micro_batch_size=2, total_batch_tokens=48, max_steps=1)
    fit(cfg, load_for_training(hf_dir), OneBatch(x, y))
    expected = hf_token_loss(hf_model, x, y).mean().item()
    assert abs(_first_logged_loss(tmp_path / "run") - expected) < 1e-4


def test_sft_from_the_base_starts_at_transformers_loss(hf_model, hf_dir, tmp_path, run_config):
    """The reference builds the seed's prompt, labels and padding itself."""
    from gpt124m.sft.data import Example, encode_examples, make_batch
    from gpt124m.sft.runner import load_base

    tok = get_tokenizer()
    examples = [
        Example("Name a colour.", "", "Blue."),
        Example("Add the numbers.", "2 and 3", "The sum is 5."),
    ]
    x, y = make_batch(encode_examples(examples), seq_len=40)
    cfg = run_config(tmp_path, seq_len=40, micro_batch_size=2, total_batch_tokens=80, max_steps=1)
    fit(cfg, load_base(str(hf_dir)), OneBatch(x, y))

    rows, labels = [], []
    for e in examples:
        body = e.instruction + (f"\n\n{e.input}" if e.input else "")
        prompt = tok.encode(f"### Instruction:\n{body}\n\n### Response:\n")
        target = tok.encode(e.output) + [50256]
        seq = prompt + target
        pad = 41 - len(seq)
        rows.append(seq + [50256] * pad)
        labels.append([-100] * len(prompt) + target + [-100] * pad)
    rows, labels = torch.tensor(rows), torch.tensor(labels)
    with torch.no_grad():
        expected = hf_model(rows, labels=labels).loss.item()  # transformers shifts labels itself
    assert abs(_first_logged_loss(tmp_path / "run") - expected) < 1e-4
