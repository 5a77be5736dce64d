import dataclasses
import json

import numpy as np
import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.eval import hellaswag as hs
from gpt124m.eval import hellaswag_data as hsd
from gpt124m.eval import multiple_choice as mc
from gpt124m.model import GPT
from gpt124m.tokenizer import get_tokenizer


def reference_logprobs(model, encoded):
    """Each ending alone, unbatched: the model's own mean loss over the ending tokens, times
    their count. Shares nothing with the batched path but the model."""
    out = np.full((len(encoded), max(len(e.rows) for e in encoded)), np.nan)
    with torch.no_grad():
        for i, e in enumerate(encoded):
            for j, row in enumerate(e.rows):
                x = torch.tensor([row[:-1]])
                y = torch.tensor([row[1:]])
                y[0, : len(row) - 1 - e.n_scored[j]] = -100
                _, loss = model(x, y)
                out[i, j] = -loss.item() * e.n_scored[j]
    return out


@pytest.fixture
def items(jsonl_file):
    return hs.load_items(jsonl_file)


@pytest.mark.parametrize("convention", hs.CONVENTIONS)
def test_scores_and_predictions_match_unbatched_reference(model, items, convention):
    # One context too long for the tiny model's 64-token block: its batch falls back to
    # separate, left-truncated rows; the other batch shares each context across its endings.
    long = dataclasses.replace(items[6], ctx="Some words. " * 30, ctx_a="Some words. " * 30)
    items = [long, *items[:6]]
    encoded = hs.encode_items(items, convention, block_size=64)
    assert len(encoded[0].context) > 64 > max(len(e.context) for e in encoded[1:]) + 20
    table = mc.score_items(model, encoded, batch_size=4, progress=False)
    ref = reference_logprobs(model, encoded)
    np.testing.assert_allclose(table, ref, rtol=1e-5)
    metrics, records = hs.summarize(encoded, table, convention)
    if convention == "completion":
        per_token = -ref / np.array([e.n_scored for e in encoded])
        expected = np.argmin(-ref, axis=1), np.argmin(per_token, axis=1)
    else:
        per_char = ref / np.array([e.norm_chars for e in encoded])
        expected = np.argmax(ref, axis=1), np.argmax(per_char, axis=1)
    assert [r["pred"] for r in records] == expected[0].tolist()
    assert [r["pred_norm"] for r in records] == expected[1].tolist()
    labels = np.array([it.label for it in items])
    assert metrics == {
        "acc": float(np.mean(expected[0] == labels)),
        "acc_norm": float(np.mean(expected[1] == labels)),
        "n": len(items),
    }


def test_batch_size_does_not_change_scores(model, items):
    # Right padding: every real position computes what it would alone (causal attention never
    # looks ahead at the padding). Matrix kernels may still round the last bit differently for
    # another batch shape, so scores are compared to 1e-6 relative and predictions exactly.
    items = items[:9]  # batch size 8: a full batch and a partial one
    one = hs.evaluate(model, items, batch_size=1, progress=False)
    eight = hs.evaluate(model, items, batch_size=8, progress=False)
    assert one.metrics == eight.metrics
    for a, b in zip(one.records, eight.records, strict=True):
        for conv in hs.CONVENTIONS:
            assert (a[conv]["pred"], a[conv]["pred_norm"]) == (
                b[conv]["pred"],
                b[conv]["pred_norm"],
            )
        np.testing.assert_allclose(
            a["completion"]["loss_sum"], b["completion"]["loss_sum"], rtol=1e-6
        )
        np.testing.assert_allclose(a["harness"]["logprob"], b["harness"]["logprob"], rtol=1e-6)


def test_rank_slices_are_disjoint_and_cover_every_item(model, items):
    encoded = hs.encode_items(items, "completion", block_size=64)
    whole = mc.score_items(model, encoded, batch_size=6, progress=False)
    parts = [
        mc.score_items(model, encoded, batch_size=6, rank=r, world_size=3, progress=False)
        for r in range(3)
    ]
    for r, part in enumerate(parts):
        start, stop = mc.shard_bounds(len(items), r, 3)
        assert (part[:start] == 0).all() and (part[stop:] == 0).all()
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-6)
    assert [mc.shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]


class CompactTokenizer:
    """GPT-2 BPE with ids renumbered densely in order of first use, so a model trained in the
    test needs a vocabulary of a few hundred rows rather than 50,304 (seconds, not minutes)."""

    def __init__(self, size):
        self.gpt2, self.ids, self.size = get_tokenizer(), {}, size

    def _id(self, i):
        new = self.ids.setdefault(i, len(self.ids))
        assert new < self.size, "CompactTokenizer ran out of ids"
        return new

    @property
    def eot_id(self):
        return self._id(self.gpt2.eot_id)

    def encode(self, text):
        return [self._id(i) for i in self.gpt2.encode(text)]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]


def test_tiny_model_trained_on_known_endings_scores_exactly_as_expected(rows):
    """Train on the 'known' ending of each item (both conventions' texts), then label some items
    with another ending: predictions must be the known endings, so acc is known exactly."""
    rows = rows[:6]
    known = [2, 0, 3, 1, 0, 2]
    labels = [2, 0, 3, 1, 1, 3]  # the last two labels disagree with what the model learned
    for row, label in zip(rows, labels, strict=True):
        row["label"] = label
        # every item gets its own endings, so that memorising one item does not favour another
        row["endings"] = [f"{e.rstrip('.')} at {row['ind']}." for e in row["endings"]]
    items = [hsd.parse_item(r, f"mem: line {i + 1}") for i, r in enumerate(rows)]
    tok = CompactTokenizer(size=256)
    texts = []
    for item, k in zip(items, known, strict=True):
        texts.append(item.ctx + " " + item.endings[k])
        texts.append(hsd.harness_query(item) + " " + hsd.preprocess(item.endings[k]))
    seqs = [tok.encode(t) for t in texts]
    T = max(map(len, seqs))
    x = torch.zeros((len(seqs), T - 1), dtype=torch.long)
    y = torch.full((len(seqs), T - 1), -100)
    for i, s in enumerate(seqs):
        x[i, : len(s) - 1] = torch.tensor(s[:-1])
        y[i, : len(s) - 1] = torch.tensor(s[1:])
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(get_preset("tiny"), vocab_size=tok.size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a busy machine
    try:
        for _ in range(300):
            _, loss = model(x, y)
            if loss.item() < 0.05:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05
    model.eval()
    result = hs.evaluate(model, items, batch_size=4, progress=False, tokenizer=tok)
    for conv in hs.CONVENTIONS:
        assert [r[conv]["pred"] for r in result.records] == known
        assert [r[conv]["pred_norm"] for r in result.records] == known
        assert result.metrics[conv] == {"acc": 4 / 6, "acc_norm": 4 / 6, "n": 6}


def test_predictions_file_has_one_record_per_item(tmp_path, model, items):
    path = tmp_path / "out" / "pred.jsonl"
    metrics = hs.evaluate(
        model, items[:5], batch_size=2, progress=False, predictions_path=path
    ).metrics
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["ind"] for r in records] == [it.ind for it in items[:5]]
    assert [r["label"] for r in records] == [it.label for it in items[:5]]
    for conv in hs.CONVENTIONS:
        hits = sum(r[conv]["pred_norm"] == r["label"] for r in records)
        assert metrics[conv]["acc_norm"] == hits / 5
    for r in records:
        assert r["completion"]["pred_norm"] == int(np.argmin(r["completion"]["loss_mean"]))
        assert r["harness"]["pred_norm"] == int(np.argmax(r["harness"]["logprob_per_char"]))
    assert set(records[0]["completion"]) == {"pred", "pred_norm", "loss_sum", "loss_mean", "tokens"}
    assert set(records[0]["harness"]) == {
        "pred",
        "pred_norm",
        "logprob",
        "logprob_per_char",
        "chars",
    }


def test_evaluation_runs_without_dropout_and_restores_training_mode(model, items):
    """A model in training mode with heavy dropout scores exactly as the same weights in eval
    mode (twice: no draw of masks), and is left in training mode."""
    noisy = GPT(dataclasses.replace(model.config, dropout=0.5))
    noisy.load_state_dict(model.state_dict())
    noisy.train()
    expected = hs.evaluate(model.eval(), items[:3], progress=False).records
    assert hs.evaluate(noisy, items[:3], progress=False).records == expected
    assert hs.evaluate(noisy, items[:3], progress=False).records == expected
    assert noisy.training
