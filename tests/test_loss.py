"""The blockwise cross-entropy against PyTorch's own: value and gradient, masking, padding, dtypes."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from gpt124m.config import ModelConfig
from gpt124m.model import GPT, IGNORE_INDEX, cross_entropy

from .conftest import needs_compiler


def _case(rows=37, vocab=50, padded=64, ignored=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, padded, generator=g) * 4).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[torch.rand(rows, generator=g) < ignored] = IGNORE_INDEX
    return logits, targets


def _reference(logits, targets, vocab):
    """What the loss replaces: torch's cross-entropy on an fp32 copy of the real columns."""
    return F.cross_entropy(logits[:, :vocab].float(), targets, ignore_index=IGNORE_INDEX)


def _value_and_grad(fn, logits, targets, vocab, upstream=1.0):
    leaf = logits.detach().clone().requires_grad_(True)
    loss = fn(leaf, targets, vocab)
    (loss * upstream).backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("block_rows", [1, 5, 2048, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_and_gradient_equal_torch_cross_entropy(block_rows, dtype):
    def ours_in_blocks(logits, targets, vocab):
        return cross_entropy(logits, targets, vocab, block_rows=block_rows)

    logits, targets = _case(dtype=dtype)
    ours, our_grad = _value_and_grad(ours_in_blocks, logits, targets, 50, upstream=3.0)
    ref, ref_grad = _value_and_grad(_reference, logits, targets, 50, upstream=3.0)
    assert ours.dtype == torch.float32 and our_grad.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # bf16 gradients: both round the same fp32 values once, so they agree to bf16's resolution.
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, **tol)
    assert not our_grad[:, 50:].any(), "padding columns must get no gradient"
    assert not our_grad[targets == IGNORE_INDEX].any(), "ignored rows must get no gradient"


def test_sum_reduction_equals_torch_sum_and_all_ignored_sums_to_zero():
    """The sum is what transformers' Trainer divides by its own token count under accumulation."""
    logits, targets = _case(dtype=torch.bfloat16)

    def ours_sum(x, t, vocab):
        return cross_entropy(x, t, vocab, block_rows=8, reduction="sum")

    def torch_sum(x, t, vocab):
        return F.cross_entropy(x[:, :vocab].float(), t, ignore_index=IGNORE_INDEX, reduction="sum")

    ours, our_grad = _value_and_grad(ours_sum, logits, targets, 50)
    ref, ref_grad = _value_and_grad(torch_sum, logits, targets, 50)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, rtol=8e-3, atol=1e-5)
    none, all_ignored = _case(ignored=1.1)
    assert cross_entropy(none, all_ignored, reduction="sum") == 0
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, targets, reduction="none")


def test_every_target_ignored_is_nan_like_torch():
    logits, targets = _case(ignored=1.1)
    assert torch.isnan(cross_entropy(logits, targets)) and torch.isnan(
        F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    )


def test_padding_columns_cannot_win():
    """A huge logit in a padding column changes nothing: only `vocab` columns are a distribution."""
    logits, targets = _case()
    spiked = logits.clone()
    spiked[:, 60] = 1e4
    torch.testing.assert_close(cross_entropy(spiked, targets, 50), _reference(logits, targets, 50))


def test_model_loss_is_torch_cross_entropy_of_its_logits(tiny_model):
    """The model's padded vocabulary (tiny: 50304 rows for 50257 ids) stays out of its loss."""
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 50257, (2, 24), generator=g)
    targets = torch.randint(0, 50257, (2, 24), generator=g)
    targets[0, :5] = IGNORE_INDEX
    logits, loss = tiny_model(idx, targets)
    assert logits.size(-1) == tiny_model.config.vocab_size
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(loss, tiny_model.parameters(), retain_graph=True)
    ref_grads = torch.autograd.grad(ref, tiny_model.parameters())
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_compiler)])
def test_no_fp32_copy_of_the_logits_is_kept_for_backward(compiled):
    """The point of the loss: under bf16 autocast, backward keeps the bf16 logits and per-row
    statistics, never an fp32 [tokens, vocab] tensor (eager: our blocks; compiled: Inductor's)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=1000))
    run = torch.compile(model) if compiled else model
    idx, targets = torch.randint(0, 1000, (2, 4, 32))
    kept = []

    def pack(t):
        kept.append((t.dtype, t.numel()))
        return t

    for hooked in (False, True):  # the first call compiles
        kept.clear()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks if hooked else contextlib.nullcontext(), torch.autocast("cpu", torch.bfloat16):
            _, loss = run(idx, targets)
        loss.backward()
    logits_size = 4 * 32 * 1000
    assert (torch.bfloat16, 4 * 32 * 1024) in kept  # the padded bf16 logits: the hooks see them
    assert not [k for k in kept if k[0] == torch.float32 and k[1] >= logits_size], kept


@needs_compiler
def test_compiled_model_loss_and_gradient_equal_eager():
    """The training step runs compiled, where the loss is Inductor's fused cross-entropy."""
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=100)
    model = GPT(config)
    idx = torch.randint(0, 100, (2, 16))
    targets = torch.randint(0, 100, (2, 16))
    targets[:, :3] = IGNORE_INDEX
    _, eager = model(idx, targets)
    eager_grads = torch.autograd.grad(eager, model.parameters())
    compiled = torch.compile(model, fullgraph=True)
    _, loss = compiled(idx, targets)
    grads = torch.autograd.grad(loss, model.parameters())
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
