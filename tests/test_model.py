"""The GPT module: init, tying, names, loss masking, last-position logits, KV cache, padding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gpt124m.config import ModelConfig
from gpt124m.kv_cache import KVCache
from gpt124m.model import GPT

from .conftest import needs_compiler

ATOL = 1e-4  # float32 logits of magnitude ~10, summed in different orders


def random_ids(shape, seed=0, high=50257):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def test_gpt2_init_stds():
    torch.manual_seed(0)
    config = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=512, vocab_size=4096)
    model = GPT(config)
    residual = 0.02 / (2 * config.n_layer) ** 0.5
    for name, p in model.named_parameters():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            expected = residual if name.endswith("c_proj.weight") else 0.02
            assert p.mean().abs() < 3e-4, name
            assert p.std().item() == pytest.approx(expected, rel=0.03), name
    # Two residual projections per block (attention and MLP) are the scaled ones.
    scaled = [n for n, _ in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(scaled) == 2 * config.n_layer


def test_lm_head_is_tied_to_wte(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert "lm_head.weight" not in dict(tiny_model.named_parameters())


def test_state_dict_names_follow_gpt2(tiny_model):
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    expected |= {f"transformer.ln_f.{p}" for p in ("weight", "bias")}
    for i in range(tiny_model.config.n_layer):
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            expected |= {f"transformer.h.{i}.{module}.{p}" for p in ("weight", "bias")}
    assert set(tiny_model.state_dict()) == expected


def test_targets_minus_100_are_ignored(tiny_model):
    idx = random_ids((3, 20), seed=1)
    targets = random_ids((3, 20), seed=2)
    ignore = torch.rand(3, 20, generator=torch.Generator().manual_seed(3)) < 0.4
    ignore[0, 0] = True
    targets[ignore] = -100
    with torch.no_grad():
        logits, loss = tiny_model(idx, targets)
    keep = ~ignore
    manual = -logits.float().log_softmax(-1)[keep].gather(1, targets[keep][:, None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # And without ignored positions the loss is plain cross-entropy over everything.
    full_targets = random_ids((3, 20), seed=2)
    with torch.no_grad():
        _, full_loss = tiny_model(idx, full_targets)
    assert full_loss.item() == pytest.approx(
        F.cross_entropy(logits.view(-1, logits.size(-1)), full_targets.view(-1)).item(), rel=1e-5
    )
    assert abs(full_loss.item() - loss.item()) > 1e-4


def test_last_only_equals_last_row(tiny_model):
    idx = random_ids((2, 13), seed=4)
    with torch.no_grad():
        full, _ = tiny_model(idx)
        last, _ = tiny_model(idx, last_only=True)
    assert full.shape == (2, 13, tiny_model.config.vocab_size)
    assert last.shape == (2, 1, tiny_model.config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], atol=ATOL, rtol=0)


def test_kv_cache_matches_full_forward(tiny_model):
    idx = random_ids((2, 24), seed=5)
    with torch.no_grad():
        full, _ = tiny_model(idx)
        cache = KVCache(tiny_model.config, 2, 24, "cpu", torch.float32)
        pieces = [tiny_model(idx[:, :5], cache=cache)[0]]  # prefill
        pieces.append(tiny_model(idx[:, 5:9], cache=cache)[0])  # a chunk after cached tokens
        for t in range(9, 24):  # then one token at a time
            pieces.append(tiny_model(idx[:, t : t + 1], cache=cache)[0])
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


def test_expanded_cache_continues_each_prefix_as_an_uncached_forward(tiny_model):
    """Two prefixes in one cache, expanded to four continuations (rows 1, 0, 1, 1): each
    continuation's logits equal its prefix + continuation run whole, without a cache."""
    prefixes = random_ids((2, 6), seed=30)
    owner = torch.tensor([1, 0, 1, 1])
    conts = random_ids((4, 5), seed=31)
    with torch.no_grad():
        cache = KVCache(tiny_model.config, 2, 6, "cpu", torch.float32)
        tiny_model(prefixes, cache=cache)
        rows = cache.expand(owner, 6 + 5)
        assert rows.length == 6 and cache.length == 6
        cached, _ = tiny_model(conts, cache=rows)
        whole, _ = tiny_model(torch.cat([prefixes[owner], conts], dim=1))
    torch.testing.assert_close(cached, whole[:, 6:], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="block size"):
        cache.expand(owner, tiny_model.config.block_size + 1)
    with pytest.raises(ValueError, match="shorter than the prefix"):
        cache.expand(owner, 5)


def test_left_padded_batch_equals_each_row_alone(tiny_model):
    lengths = [7, 12, 3]
    rows = [random_ids((1, n), seed=10 + i) for i, n in enumerate(lengths)]
    longest = max(lengths)
    idx = random_ids((3, longest), seed=99)  # padding holds arbitrary tokens: it must not matter
    mask = torch.zeros(3, longest, dtype=torch.long)
    for i, row in enumerate(rows):
        idx[i, longest - row.size(1) :] = row
        mask[i, longest - row.size(1) :] = 1
    extra = random_ids((3, 4), seed=20)  # then decode four more tokens per row with the cache
    with torch.no_grad():
        batched, _ = tiny_model(idx, attention_mask=mask)
        cache = KVCache(tiny_model.config, 3, longest + 4, "cpu", torch.float32)
        tiny_model(idx, attention_mask=mask, cache=cache)
        steps = []
        for t in range(4):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            steps.append(tiny_model(extra[:, t : t + 1], attention_mask=mask, cache=cache)[0])
        stepped = torch.cat(steps, dim=1)
        for i, row in enumerate(rows):
            alone, _ = tiny_model(torch.cat([row, extra[i : i + 1]], dim=1))
            n = row.size(1)
            torch.testing.assert_close(batched[i, longest - n :], alone[0, :n], atol=ATOL, rtol=0)
            torch.testing.assert_close(stepped[i], alone[0, n:], atol=ATOL, rtol=0)
            assert torch.isfinite(batched[i]).all()


def test_forward_rejects_overlong_input_and_bad_mask(tiny_model):
    block = tiny_model.config.block_size
    with pytest.raises(ValueError, match="block size"):
        tiny_model(torch.zeros(1, block + 1, dtype=torch.long))
    cache = KVCache(tiny_model.config, 1, block, "cpu", torch.float32)
    cache.advance(block)
    with pytest.raises(ValueError, match="block size"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="attention_mask"):
        tiny_model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="block size"):
        KVCache(tiny_model.config, 1, block + 1, "cpu", torch.float32)


def test_backward_reaches_every_parameter(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    idx = random_ids((2, 8), seed=7)
    _, loss = model(idx, random_ids((2, 8), seed=8))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@needs_compiler
def test_compiled_with_dynamic_length_is_one_graph_and_equals_eager():
    """A compiled model meeting a second sequence length turns T dynamic; it must stay one graph
    (the trainer compiles it; SFT and evaluation batches vary in length)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=100))
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for T in (7, 1, 32):
        idx, targets = torch.randint(0, 100, (2, 2, T))
        logits, loss = compiled(idx, targets)
        ref_logits, ref_loss = model(idx, targets)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
