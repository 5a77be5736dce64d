"""The losses against PyTorch's own: the blockwise cross-entropy on logits and the head-and-loss
that never makes them (`linear_cross_entropy`), value and gradient, masking, padding, dtypes."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from gpt124m.config import ModelConfig
from gpt124m.model import GPT, IGNORE_INDEX, cross_entropy, linear_cross_entropy

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
    kept = _kept_for_backward(compiled, return_logits=True)
    logits_size = 4 * 32 * 1000
    assert (torch.bfloat16, 4 * 32 * 1024) in kept  # the padded bf16 logits: the hooks see them
    assert not [k for k in kept if k[0] == torch.float32 and k[1] >= logits_size], kept


def test_without_logits_backward_keeps_nothing_of_their_size():
    """What training asks for (`return_logits=False`): not even the bf16 logits are kept."""
    kept = _kept_for_backward(False, return_logits=False)
    assert kept and not [k for k in kept if k[1] >= 4 * 32 * 1000], kept


def _kept_for_backward(compiled: bool, return_logits: bool) -> list[tuple[torch.dtype, int]]:
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
            _, loss = run(idx, targets, return_logits=return_logits)
        loss.backward()
    return kept


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


def _head_case(rows=37, width=16, vocab=50, padded=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g).requires_grad_(True)
    weight = (torch.randn(padded, width, generator=g) * 0.5).requires_grad_(True)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[torch.rand(rows, generator=g) < 0.3] = IGNORE_INDEX
    return x, weight, targets


def _head_loss_and_grads(fn, x, weight, targets, autocast=None):
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss = fn(x, weight, targets)
    return (loss.detach(), *torch.autograd.grad(loss * 3.0, (x, weight)))


def _head_then_loss(x, weight, targets):
    """torch's loss on the head's logits, in fp32 (or fp64, given fp64 inputs)."""
    logits = F.linear(x, weight)[:, :50]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_linear_cross_entropy_equals_torch_on_the_logits(block_rows):
    x, weight, targets = _head_case()

    def ours(x, weight, targets):
        return linear_cross_entropy(x, weight, targets, 50, block_rows=block_rows)

    got = _head_loss_and_grads(ours, x, weight, targets)
    want = _head_loss_and_grads(_head_then_loss, x, weight, targets)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not got[2][50:].any(), "padding rows of the head must get no gradient"


def test_linear_cross_entropy_under_bf16_autocast_is_as_exact_as_the_logits_path():
    """Both round the logits and the logits' gradient to bf16 once: measured against the fp64
    truth, our errors are no larger than those of torch's loss on autocast's bf16 logits."""
    x, weight, targets = _head_case(rows=200, width=64, padded=64)
    truth = _head_loss_and_grads(_head_then_loss, x.double(), weight.double(), targets)

    def ours(x, weight, targets):
        return linear_cross_entropy(x, weight, targets, 50, block_rows=16)

    got = _head_loss_and_grads(ours, x, weight, targets, autocast=torch.bfloat16)
    usual = _head_loss_and_grads(_head_then_loss, x, weight, targets, autocast=torch.bfloat16)
    for a, b, t in zip(got, usual, truth, strict=True):
        assert a.dtype == b.dtype
        ours_err = (a.double() - t).norm() / t.norm()
        usual_err = (b.double() - t).norm() / t.norm()
        assert 0 < usual_err < 0.02  # bf16 rounding shows, so the comparison can tell
        assert ours_err <= 1.25 * usual_err, (ours_err, usual_err)


def test_linear_cross_entropy_with_a_frozen_head_without_grad_and_in_fp16():
    """LoRA freezes the head (only x gets a gradient); evaluation runs without grad; fp16 takes
    the logits path (its gradients need the loss scale before they are cast)."""
    x, weight, targets = _head_case()
    want = _head_loss_and_grads(_head_then_loss, x, weight, targets)
    frozen = weight.detach()
    loss = linear_cross_entropy(x, frozen, targets, 50, block_rows=5)
    (grad_x,) = torch.autograd.grad(loss * 3.0, x)
    torch.testing.assert_close(grad_x, want[1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, weight, targets, 50), want[0])
    with torch.autocast("cpu", dtype=torch.float16):
        half = linear_cross_entropy(x, weight, targets, 50)
        logits_path = cross_entropy(F.linear(x, weight), targets, 50)
    assert torch.equal(half, logits_path)
    none = torch.full_like(targets, IGNORE_INDEX)  # nan, with zero gradients, like torch's
    nan = linear_cross_entropy(x, weight, none, 50)
    assert torch.isnan(nan) and not any(g.any() for g in torch.autograd.grad(nan, (x, weight)))


def test_model_loss_without_logits_equals_the_loss_with_them(tiny_model):
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 50257, (2, 24), generator=g)
    targets = torch.randint(0, 50257, (2, 24), generator=g)
    targets[1, :7] = IGNORE_INDEX
    logits, loss = tiny_model(idx, targets, return_logits=False)
    assert logits is None
    _, ref = tiny_model(idx, targets)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(loss, tiny_model.parameters())
    ref_grads = torch.autograd.grad(ref, tiny_model.parameters())
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def _batch(seed=6):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 50257, (2, 16), generator=g)
    targets = torch.randint(0, 50257, (2, 16), generator=g)
    targets[0, :5] = IGNORE_INDEX
    return idx, targets


def test_a_hook_on_the_head_takes_part_in_the_training_loss(tiny_model):
    """Training asks for no logits; a hook on lm_head (here: halving its output) must still act."""
    model = copy.deepcopy(tiny_model)
    seen = []

    def halve(module, args, output):
        seen.append(args[0].detach())
        return output * 0.5

    model.lm_head.register_forward_hook(halve)
    idx, targets = _batch()
    _, loss = model(idx, targets, return_logits=False)
    assert len(seen) == 1
    vocab = model.config.vocab_size
    halved = F.linear(seen[0], model.lm_head.weight) * 0.5
    ref = F.cross_entropy(halved[..., :vocab].flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    _, unhooked = tiny_model(idx, targets, return_logits=False)
    assert abs(loss.item() - unhooked.item()) > 0.1  # the hook changed what was scored


def test_a_peft_adapter_on_the_head_is_trained(tiny_model):
    """LoRA on lm_head (a user's own peft config; gpt124m's targets stop at the blocks) must be in
    the loss that trains it, not bypassed by reading the base weight."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        copy.deepcopy(tiny_model), peft.LoraConfig(r=4, lora_alpha=4, target_modules=["lm_head"])
    )
    head = model.base_model.model.lm_head
    with torch.no_grad():  # B starts at zero; make the adapter change the output
        head.lora_B["default"].weight.normal_(0, 0.5)
    idx, targets = _batch()
    _, loss = model(idx, targets, return_logits=False)
    logits, _ = model(idx, targets)  # the logits path calls the wrapped head
    ref_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    _, base = tiny_model(idx, targets, return_logits=False)
    assert abs(loss.item() - base.item()) > 0.01
    loss.backward()
    assert head.lora_B["default"].weight.grad.abs().sum() > 0
