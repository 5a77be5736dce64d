"""Mixed precision really runs, and agrees with fp32: bf16 autocast and fp16 with its gradient
scaler, both on CPU, through `fit()`.

The model is the lively tiny one (wide random weights): at GPT-2's init the logits are near zero
and every precision gives the same near-uniform loss, which would hide a broken cast.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt124m.train.trainer import fit

from ..conftest import FixedBatches, lively_tiny_model, tiny_run_config

STEPS = 6


def train(tmp_path, precision: str, **overrides):
    """STEPS steps of the lively tiny model; returns the logged records and the weight update."""
    model = lively_tiny_model()
    start = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    settings = dict(max_steps=STEPS, max_lr=3e-3, min_lr=3e-4, warmup_steps=2)
    cfg = tiny_run_config(tmp_path / precision, precision=precision, **{**settings, **overrides})
    fit(cfg, model, FixedBatches(n_batches=2))
    lines = (tmp_path / precision / "run" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    update = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - start
    return records, update


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("fp32"), "fp32")


def test_bf16_training_agrees_with_fp32(tmp_path, fp32_run):
    """Tolerances: bf16 keeps 8 significant bits, so each rounding errs by up to 2^-9 ~ 2e-3
    relative (~4e-3 after a few ops). The loss is a log-sum-exp over bf16 logits computed in fp32,
    where these errors mostly average out: measured <= 1e-3 relative here, so 1e-2 allows a few
    worst-case roundings. The weights stay fp32 (autocast casts only matmul inputs), and AdamW's
    update is sign-like, so the whole update differs only where a gradient is too small for bf16
    to resolve (e.g. the attention key bias, zero in exact arithmetic): measured ~1% of its norm,
    allowed 5%. A 20% change of the LR moves the update by more than that (checked below)."""
    (expected, expected_update), (records, update) = fp32_run, train(tmp_path, "bf16")
    losses = [r["loss"] for r in records]
    assert losses == pytest.approx([r["loss"] for r in expected], rel=1e-2)
    assert losses != [r["loss"] for r in expected], "bf16 autocast did not change any rounding"
    assert losses[-1] < losses[0] - 1.0  # it trains, by far more than the tolerance
    assert relative(update, expected_update) < 0.05
    _, other_lr = train(tmp_path / "lr", "fp32", max_lr=3.6e-3)
    assert relative(other_lr, expected_update) > 0.05  # the tolerance can see a real difference


def cpu_fp16_support() -> str | None:
    """Why this torch cannot train in fp16 on CPU, or None (CPU fp16 autocast and the CPU
    GradScaler came in torch 2.3; the project allows 2.4 and up, so this is a guard only)."""
    try:
        torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, TypeError, ValueError) as e:
        return f"torch {torch.__version__} has no fp16 training on CPU ({e})"
    if out.dtype != torch.float16:
        return f"torch {torch.__version__}: CPU autocast does not run matmuls in fp16"
    return None


def test_fp16_with_gradient_scaler_trains_on_cpu(tmp_path, fp32_run):
    """fp16 keeps 11 significant bits (rounding error 2^-12 ~ 2.4e-4); the gradient scaler
    multiplies the loss by 2^16 before backward and divides the gradients again, so the update
    equals fp32's up to fp16 rounding: measured ~0.4% of its norm, allowed 2%; losses 2e-3."""
    if reason := cpu_fp16_support():
        pytest.skip(reason)
    from gpt124m.train import checkpointing

    (expected, expected_update), (records, update) = (
        fp32_run,
        train(tmp_path, "fp16", checkpoint_every=STEPS),
    )
    losses = [r["loss"] for r in records]
    assert losses == pytest.approx([r["loss"] for r in expected], rel=2e-3)
    assert losses != [r["loss"] for r in expected], "fp16 autocast did not change any rounding"
    assert relative(update, expected_update) < 0.02
    # The scaler ran (its state is part of the checkpoint) and skipped no step.
    (path,) = checkpointing.list_checkpoints(tmp_path / "fp16" / "run" / "checkpoints")
    state = torch.load(path / checkpointing.OPTIMIZER_NAME, weights_only=True)["scaler"]
    assert state is not None and state["scale"] == 2.0**16
    assert state["_growth_tracker"] == STEPS
