"""Our training step is the reference's: `fit()` against transformers' GPT2LMHeadModel trained by
a plain loop with torch.optim.AdamW, set up as the seed's run is (betas 0.9/0.95, eps 1e-8, weight
decay 0.1 on matrices and embeddings only, clipping at global norm 1.0, linear warmup then cosine
to 10% of the peak LR). Same random weights, same batches, fp32 on CPU: losses and final weights
must agree to 1e-5, with and without gradient accumulation, and the LR logged at every step is the
schedule's, also across a resume.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gpt124m.loading import load_model
from gpt124m.train.trainer import fit

from ..conftest import FixedBatches, tiny_run_config

transformers = pytest.importorskip("transformers")

VOCAB = 512  # a multiple of 64: no vocabulary padding on our side either
SEQ = 32
ROWS = 4  # sequences per optimizer step
MAX_LR = 3e-3
WARMUP = 2
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def seed_lr(step: int, max_steps: int) -> float:
    """The seed's schedule, written out: linear warmup to MAX_LR over WARMUP steps (the first
    step already trains), then a cosine from MAX_LR down to MAX_LR / 10 on the last step."""
    if step < WARMUP:
        return MAX_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / (max_steps - 1 - WARMUP)
    return MAX_LR / 10 + 0.5 * (1 + math.cos(math.pi * progress)) * (MAX_LR - MAX_LR / 10)


def gpt2_model() -> transformers.GPT2LMHeadModel:
    """A small random GPT-2 with tied embeddings and no dropout. Its weights are drawn wider than
    GPT-2's init so that gradients are large enough for clipping to engage on the early steps."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(5.0)
    return model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    gpt2_model().save_pretrained(path)
    return path


def reference_run(gpt2_dir, *, micro: int, steps: int) -> tuple[list[float], dict, list[float]]:
    """The plain loop: per step, `ROWS // micro` micro-batches of mean loss / accumulation."""
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).train()
    params = dict(model.named_parameters())  # the tied lm_head is wte: listed once
    assert model.lm_head.weight is model.transformer.wte.weight
    no_decay = [
        n for n in params if n.endswith(".bias") or ".ln_" in n or n.startswith("transformer.ln_f")
    ]
    decay = [n for n in params if n not in no_decay]
    assert "transformer.wte.weight" in decay and "lm_head.weight" not in params
    optimizer = torch.optim.AdamW(
        [
            {"params": [params[n] for n in decay], "weight_decay": 0.1},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
        ],
        lr=MAX_LR,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    accum = ROWS // micro
    data = FixedBatches(n_batches=steps * accum, batch_size=micro, seq_len=SEQ, vocab=VOCAB)
    losses, norms = [], []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = seed_lr(step, steps)
        optimizer.zero_grad()
        total = 0.0
        for _ in range(accum):
            x, y = data.next_batch()
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, VOCAB), y.reshape(-1)) / accum
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        optimizer.step()
        losses.append(total)
    return losses, dict(model.named_parameters()), norms


def our_run_config(tmp_path, *, micro: int, steps: int, **overrides):
    return tiny_run_config(
        tmp_path,
        seq_len=SEQ,
        micro_batch_size=micro,
        total_batch_tokens=ROWS * SEQ,
        max_steps=steps,
        warmup_steps=WARMUP,
        max_lr=MAX_LR,
        min_lr=MAX_LR / 10,
        schedule="cosine",
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        eps=1e-8,
        grad_clip=1.0,
        **overrides,
    )


def train_records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def assert_same_weights(ours, theirs: dict) -> None:
    """Every GPT-2 parameter against ours (Conv1D weights are stored transposed there).

    Except the attention key biases: softmax is blind to adding the same q.b_k to every score
    of a row, so their gradient is zero in exact arithmetic, and what each implementation
    computes is rounding noise (~1e-9) that Adam scales up to steps of up to the LR. They change
    no output; the losses above check that."""
    mine = dict(ours.named_parameters())
    assert set(mine) == set(theirs)
    for name, value in theirs.items():
        expected = value.t() if name.endswith(CONV1D) else value
        got = mine[name]
        if name.endswith("attn.c_attn.bias"):
            q, _, v = expected.chunk(3)
            expected = torch.cat([q, v])
            q, _, v = got.chunk(3)
            got = torch.cat([q, v])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("micro", [ROWS, ROWS // 2], ids=["one-batch", "accumulated"])
def test_fit_equals_a_plain_adamw_loop_on_transformers_gpt2(tmp_path, gpt2_dir, micro):
    steps = 5
    expected_losses, expected_weights, norms = reference_run(gpt2_dir, micro=micro, steps=steps)
    assert max(norms) > 1.0, "precondition: clipping engages on some step"
    model = load_model(gpt2_dir)  # the public import path
    assert model.config.vocab_size == VOCAB
    cfg = our_run_config(tmp_path, micro=micro, steps=steps)
    fit(
        cfg,
        model,
        FixedBatches(n_batches=steps * ROWS // micro, batch_size=micro, seq_len=SEQ, vocab=VOCAB),
    )
    records = train_records(tmp_path / "run")
    assert [r["loss"] for r in records] == pytest.approx(expected_losses, abs=1e-5)
    assert [r["grad_norm"] for r in records] == pytest.approx(norms, rel=1e-5)
    assert [r["lr"] for r in records] == pytest.approx([seed_lr(s, steps) for s in range(steps)])
    assert_same_weights(model, expected_weights)
    # the weights moved well beyond the tolerance, so agreeing to 1e-5 means something
    initial = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).transformer.wte.weight
    assert (model.transformer.wte.weight - initial).abs().max() > 1e-3


class Interrupted(Exception):
    pass


class StopAfter(FixedBatches):
    """FixedBatches that fails after `limit` batches: a run that dies part-way."""

    def __init__(self, limit: int | None, **kw):
        super().__init__(**kw)
        self.limit = limit

    def next_batch(self):
        if self.limit is not None and self.i >= self.limit:
            raise Interrupted
        return super().next_batch()


def test_logged_lr_is_the_schedule_at_every_step_across_a_resume(tmp_path, gpt2_dir):
    steps, micro = 8, ROWS // 2
    accum = ROWS // micro
    kw = dict(n_batches=steps * accum, batch_size=micro, seq_len=SEQ, vocab=VOCAB)
    cfg = our_run_config(tmp_path, micro=micro, steps=steps, checkpoint_every=3)
    with pytest.raises(Interrupted):
        fit(cfg, load_model(gpt2_dir), StopAfter(5 * accum, **kw))  # dies during step 6
    assert [r["step"] for r in train_records(tmp_path / "run")] == [1, 2, 3, 4, 5]
    resumed = load_model(gpt2_dir)
    fit(dataclasses.replace(cfg, resume="auto"), resumed, StopAfter(None, **kw))  # from step 3
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:  # record `step` is logged after optimizer step `step - 1` (0-based)
        assert r["lr"] == pytest.approx(seed_lr(r["step"] - 1, steps), rel=1e-12), r["step"]
    expected_losses, expected_weights, _ = reference_run(gpt2_dir, micro=micro, steps=steps)
    assert [r["loss"] for r in records] == pytest.approx(expected_losses, abs=1e-5)
    assert_same_weights(resumed, expected_weights)
