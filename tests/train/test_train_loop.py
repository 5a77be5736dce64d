import json

import pytest
import torch

from gpt124m.checkpoint import load_model
from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import checkpointing
from gpt124m.train.config import TrainConfig
from gpt124m.train.trainer import TrainingDiverged, fit


def tiny_cfg(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path / "run"),
        seq_len=32,
        micro_batch_size=4,
        total_batch_tokens=128,
        max_steps=40,
        max_lr=1e-2,
        min_lr=1e-3,
        warmup_steps=5,
        precision="fp32",
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_tiny_model_overfits_one_batch(tmp_path, fixed_batches):
    torch.manual_seed(0)
    summary = fit(tiny_cfg(tmp_path, max_steps=80), GPT(get_preset("tiny")), fixed_batches())
    losses = train_losses(tmp_path / "run")
    assert losses[0] > 6.0 and losses[-1] < 0.5
    assert summary["steps"] == 80 and summary["tokens_seen"] == 80 * 128
    # the final checkpoint is a model directory that reproduces the trained weights
    model = load_model(tmp_path / "run" / "checkpoints" / "step_0000080")
    x, y = fixed_batches().next_batch()
    _, loss = model(x, y)
    assert loss.item() < 0.5


def test_grad_accumulation_equals_one_big_batch(tmp_path, fixed_batches):
    def run(micro, name):
        torch.manual_seed(0)
        cfg = tiny_cfg(tmp_path / name, micro_batch_size=micro, max_steps=3, total_batch_tokens=256)
        fit(cfg, GPT(get_preset("tiny")), fixed_batches(n_batches=8 // micro, batch_size=micro))
        return train_losses(tmp_path / name / "run")

    big, accumulated = run(8, "big"), run(4, "accum")
    assert big == pytest.approx(accumulated, abs=1e-5)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, fixed_batches):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("inf") if calls["n"] > 5 else output

    model.lm_head.register_forward_hook(poison)
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=10)
    with pytest.raises(TrainingDiverged, match="non-finite loss .* step 6"):
        fit(cfg, model, fixed_batches())
    ckpts = checkpointing.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts][-1] == "step_0000004"
    checkpointing.verify(ckpts[-1])


def test_corrupt_checkpoint_is_reported_and_skipped(tmp_path, caplog, fixed_batches):
    torch.manual_seed(0)
    fit(
        tiny_cfg(tmp_path, checkpoint_every=2, max_steps=4),
        GPT(get_preset("tiny")),
        fixed_batches(),
    )
    root = tmp_path / "run" / "checkpoints"
    newest = root / "step_0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    assert checkpointing.find_resumable(root).name == "step_0000002"
    assert "sha256 mismatch" in caplog.text


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, fixed_batches):
    cfg = tiny_cfg(tmp_path, max_steps=2)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    with pytest.raises(ValueError, match="--resume auto"):
        fit(cfg, GPT(get_preset("tiny")), fixed_batches())
