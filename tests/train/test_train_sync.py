"""The loop reads step statistics from the device only when it must (logging, periodic work, every
STATS_EVERY steps), and what it then logs and checks is still each step's own value."""

import json

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import checkpointing, step, trainer
from gpt124m.train.step import TrainingDiverged
from gpt124m.train.trainer import fit

from ..conftest import tiny_run_config


def records(run_dir):
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def run(tmp_path, name, fixed_batches, **kw):
    torch.manual_seed(0)
    cfg = tiny_run_config(tmp_path / name, max_steps=10, max_lr=1e-2, **kw)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches(n_batches=3))
    return records(tmp_path / name / "run")


def test_sparse_logging_records_the_same_values_as_logging_every_step(tmp_path, fixed_batches):
    every = {r["step"]: r for r in run(tmp_path, "every", fixed_batches, log_every=1)}
    sparse = run(tmp_path, "sparse", fixed_batches, log_every=4)
    assert [r["step"] for r in sparse] == [4, 8, 10]
    for r in sparse:
        for key in ("loss", "grad_norm", "lr"):
            assert r[key] == every[r["step"]][key], key
        assert r["ms"] > 0 and r["tokens_per_s"] > 0


def test_statistics_are_read_once_per_log_not_once_per_step(tmp_path, fixed_batches, monkeypatch):
    calls = []
    settle = step.Stepper.settle

    def counting(self, *args):
        calls.append(self.step)
        return settle(self, *args)

    monkeypatch.setattr(step.Stepper, "settle", counting)
    run(tmp_path, "quiet", fixed_batches, log_every=0)  # only the final checkpoint needs them
    assert calls == [10]
    calls.clear()
    monkeypatch.setattr(trainer, "STATS_EVERY", 3)  # and at least every 3 steps
    run(tmp_path, "five", fixed_batches, log_every=5)
    assert calls == [3, 5, 8, 10]


def test_a_non_finite_step_between_logs_still_stops_before_the_next_checkpoint(
    tmp_path, fixed_batches
):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("inf") if calls["n"] > 5 else output

    model.transformer.ln_f.register_forward_hook(poison)  # what the loss reads
    cfg = tiny_run_config(tmp_path, max_steps=10, log_every=0, checkpoint_every=4)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(.*\) at step 6"):
        fit(cfg, model, fixed_batches())
    ckpts = checkpointing.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_0000004"]
    checkpointing.verify(ckpts[-1])


def test_logged_speed_is_the_steps_own_time_and_mfu_its_flops_over_the_peak(
    tmp_path, fixed_batches, monkeypatch
):
    """Steps made to take 0.3 s and samples (every 2 steps) 2 s, with a checkpoint every 2: the
    logged ms is the steps' time alone, tokens/s is the batch over it, and MFU is the FLOPs of
    those tokens over --peak-flops."""
    import time

    from gpt124m.train import costs
    from gpt124m.train.evaluators import Hooks

    run_step = step.Stepper.run

    def slow(self):
        time.sleep(0.3)
        run_step(self)

    monkeypatch.setattr(step.Stepper, "run", slow)
    cfg = tiny_run_config(
        tmp_path, max_steps=4, log_every=2, sample_every=2, checkpoint_every=2, peak_flops=1e12
    )
    model = GPT(get_preset("tiny"))
    fit(cfg, model, fixed_batches(), hooks=Hooks(samples=lambda m: time.sleep(2.0) or ["x"]))
    logged = records(tmp_path / "run")
    assert [r["step"] for r in logged] == [2, 4]
    flops = costs.training_flops_per_token(model, model.config, cfg.seq_len)
    for r in logged:
        # a step's sleep and work (slower on a busy machine), never the 2 s of sampling between
        # the two logged steps: counted, they would make 1300 ms a step
        assert 300 <= r["ms"] < 1000
        assert r["tokens_per_s"] == pytest.approx(cfg.total_batch_tokens / (r["ms"] / 1000))
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 1e12)
