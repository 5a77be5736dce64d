import dataclasses
import json
import math
import shutil

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.loading import load_model
from gpt124m.model import GPT
from gpt124m.train import checkpointing
from gpt124m.train.step import TrainingDiverged
from gpt124m.train.trainer import fit

from ..conftest import needs_muon, snapshot, tiny_run_config


def tiny_cfg(tmp_path, **kw):
    """The shared tiny run, longer and with a higher LR so that the loop tests see learning."""
    return tiny_run_config(
        tmp_path, **{"max_steps": 40, "max_lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 5, **kw}
    )


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


@needs_muon
def test_muon_trains_and_leaves_an_ordinary_model_directory(tmp_path, fixed_batches):
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, max_steps=40, optimizer="muon", muon_lr=0.05)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 3.0
    model = load_model(tmp_path / "run" / "checkpoints" / "step_0000040")
    assert set(model.state_dict()) == set(GPT(get_preset("tiny")).state_dict())
    x, y = fixed_batches().next_batch()
    assert model(x, y)[1].item() == pytest.approx(losses[-1], abs=1.0)


def test_grad_accumulation_equals_one_big_batch(tmp_path, fixed_batches):
    def run(micro, name):
        torch.manual_seed(0)
        cfg = tiny_cfg(tmp_path / name, micro_batch_size=micro, max_steps=3, total_batch_tokens=256)
        fit(cfg, GPT(get_preset("tiny")), fixed_batches(n_batches=8 // micro, batch_size=micro))
        return train_losses(tmp_path / name / "run")

    big, accumulated = run(8, "big"), run(4, "accum")
    assert big == pytest.approx(accumulated, abs=1e-5)


class MaskedBatches:
    """Rows with very different numbers of unmasked targets, as in instruction tuning."""

    def __init__(self, micro_batch_size, seq_len=32, vocab=1000, kept=(30, 2, 16, 5)):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, vocab, (4, seq_len + 1), generator=g)
        self.x, self.y = x[:, :-1], x[:, 1:].clone()
        for row, n in enumerate(kept):
            self.y[row, : seq_len - n] = -100
        self.micro, self.i = micro_batch_size, 0

    def next_batch(self):
        rows = [(self.i + k) % 4 for k in range(self.micro)]
        self.i += self.micro
        return self.x[rows], self.y[rows]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_accumulation_weights_micro_batches_by_their_target_tokens(tmp_path):
    """Four micro-batches of one row each must equal one batch of four rows: the loss is the
    mean over every unmasked target of the step, not the mean of per-row means."""

    def run(micro, name):
        torch.manual_seed(0)
        cfg = tiny_cfg(tmp_path / name, micro_batch_size=micro, max_steps=3, total_batch_tokens=128)
        model = GPT(get_preset("tiny"))
        fit(cfg, model, MaskedBatches(micro))
        return train_losses(tmp_path / name / "run"), model.transformer.wte.weight

    (big, big_w), (accumulated, acc_w) = run(4, "big"), run(1, "accum")
    assert big == pytest.approx(accumulated, abs=1e-5)
    torch.testing.assert_close(big_w, acc_w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # the no-logits loss; the logits one
def test_a_micro_batch_without_targets_counts_for_nothing(tmp_path, precision):
    """A row whose targets are all masked, alone in its micro-batch, has a 0/0 mean loss: the
    step must still equal the batch of four rows, not turn nan."""

    def run(micro, name):
        torch.manual_seed(0)
        cfg = tiny_cfg(tmp_path / name, micro_batch_size=micro, max_steps=3,
                       total_batch_tokens=128, precision=precision)  # fmt: skip
        model = GPT(get_preset("tiny"))
        fit(cfg, model, MaskedBatches(micro, kept=(30, 0, 16, 5)))
        return train_losses(tmp_path / name / "run"), model.transformer.wte.weight

    (big, big_w), (accumulated, acc_w) = run(4, "big"), run(1, "accum")
    assert all(map(math.isfinite, accumulated)), accumulated
    tol = 1e-5 if precision == "fp32" else 2e-3
    assert big == pytest.approx(accumulated, abs=tol)
    torch.testing.assert_close(big_w, acc_w, rtol=0, atol=tol)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, fixed_batches):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("inf") if calls["n"] > 5 else output

    model.transformer.ln_f.register_forward_hook(poison)  # what the loss reads
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=10)
    with pytest.raises(TrainingDiverged, match="non-finite loss .* step 6"):
        fit(cfg, model, fixed_batches())
    ckpts = checkpointing.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts][-1] == "step_0000004"
    checkpointing.verify(ckpts[-1])


def test_corrupt_checkpoint_is_reported_skipped_and_set_aside(tmp_path, caplog, fixed_batches):
    torch.manual_seed(0)
    fit(
        tiny_cfg(tmp_path / "whole", checkpoint_every=2, max_steps=6),
        GPT(get_preset("tiny")),
        fixed_batches(),
    )
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=4, keep_checkpoints=2)
    torch.manual_seed(0)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    root = tmp_path / "run" / "checkpoints"
    newest = root / "step_0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    assert checkpointing.find_resumable(root).name == "step_0000002"
    assert "sha256 mismatch" in caplog.text
    # Resuming sets the corrupt checkpoint aside (kept), so pruning cannot favour it over the
    # new ones, and the run continues exactly from step 2.
    resumed = dataclasses.replace(cfg, max_steps=6, resume="auto")
    fit(resumed, GPT(get_preset("tiny")), fixed_batches())
    assert [p.name for p in checkpointing.list_checkpoints(root)] == [
        "step_0000004",
        "step_0000006",
    ]
    for path in checkpointing.list_checkpoints(root):
        checkpointing.verify(path)
    (aside,) = root.glob("step_0000004.set-aside-*")
    assert (aside / "model.safetensors").stat().st_size == 100
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "whole" / "run")


def test_rolling_back_sets_the_later_timeline_aside(tmp_path, fixed_batches):
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=6, keep_checkpoints=2)
    torch.manual_seed(0)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpointing.list_checkpoints(root)] == [
        "step_0000004",
        "step_0000006",
    ]
    rollback = dataclasses.replace(cfg, max_steps=8, max_lr=5e-3, resume=str(root / "step_0000004"))
    fit(rollback, GPT(get_preset("tiny")), fixed_batches())
    assert [p.name for p in checkpointing.list_checkpoints(root)] == [
        "step_0000006",
        "step_0000008",
    ]
    assert len(list(root.glob("step_0000006.set-aside-*"))) == 1
    # the metrics log follows the new timeline: one record per step
    assert len(train_losses(tmp_path / "run")) == 8


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path, fixed_batches):
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=2)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    weights = tmp_path / "run" / "checkpoints" / "step_0000002" / "model.safetensors"
    weights.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="none of the 1 checkpoints .* verifies"):
        fit(dataclasses.replace(cfg, resume="auto"), GPT(get_preset("tiny")), fixed_batches())


@pytest.mark.parametrize("failing", ["optimizer", "weights"])
def test_a_checkpoint_the_disk_cannot_hold_stops_in_a_line_keeping_the_earlier_ones(
    tmp_path, fixed_batches, monkeypatch, failing
):
    """A full disk as each writer reports it (torch: a RuntimeError from its stream writer;
    safetensors: its own error type): the run stops with a line naming the checkpoint, leaves no
    partial directory, and the checkpoint before it still resumes."""
    import safetensors.torch
    from safetensors import SafetensorError

    from gpt124m import checkpoint as model_files

    torch_save, save_file = torch.save, safetensors.torch.save_file
    at_step_4 = "step_0000004"

    def torch_full(obj, path, *args, **kwargs):
        if at_step_4 in str(path) and str(path).endswith("optimizer.pt"):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                "file data/0: file write failed"
            )
        return torch_save(obj, path, *args, **kwargs)

    def safetensors_full(tensors, path, *args, **kwargs):
        if at_step_4 in str(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device")
        return save_file(tensors, path, *args, **kwargs)

    if failing == "optimizer":
        monkeypatch.setattr(torch, "save", torch_full)
    else:
        monkeypatch.setattr(model_files, "save_file", safetensors_full)
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=4)
    with pytest.raises(
        OSError, match="step_0000004: checkpoint not written .*(write failed|space)"
    ):
        fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002"]
    monkeypatch.undo()
    fit(dataclasses.replace(cfg, resume="auto"), GPT(get_preset("tiny")), fixed_batches())
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002", "step_0000004"]


def test_a_run_into_a_folder_another_run_trains_into_is_refused_and_changes_nothing(
    tmp_path, fixed_batches
):
    """Another process holds OUT_DIR (as a training run does): a second run stops in a line
    before it writes anything; once the other is gone, the same command runs."""
    import subprocess
    import sys

    pytest.importorskip("fcntl")
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, max_steps=2)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    out = tmp_path / "run"
    before = snapshot(out)
    hold = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True
    )
    again = dataclasses.replace(cfg, resume="auto", max_steps=4)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match="another run is training into this folder"):
            fit(again, GPT(get_preset("tiny")), fixed_batches())
        assert snapshot(out) == before
    finally:
        other.kill()
        other.wait()
    assert fit(again, GPT(get_preset("tiny")), fixed_batches())["steps"] == 4
    assert fit(again, GPT(get_preset("tiny")), fixed_batches())["steps"] == 4  # released


def test_a_fresh_start_does_not_inherit_a_dead_runs_metrics(tmp_path, fixed_batches):
    run = tmp_path / "run"
    run.mkdir()
    dead = '{"kind": "train", "step": 1, "loss": 99.0, "tokens": 128}\n{"kind": "tr'
    (run / "metrics.jsonl").write_text(dead)
    fit(tiny_cfg(tmp_path, max_steps=3, resume="auto"), GPT(get_preset("tiny")), fixed_batches())
    losses = train_losses(run)
    assert len(losses) == 3 and 99.0 not in losses
    assert (run / "metrics.previous.jsonl").read_text() == dead


def test_metrics_log_skips_a_torn_last_line(tmp_path, caplog):
    from gpt124m.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n\0\0\0\0\n')
    log = MetricsLog(path)
    assert log.read() == [{"kind": "train", "step": 1}]
    assert "unreadable line" in caplog.text
    log.truncate_after(1)
    assert path.read_text() == '{"kind": "train", "step": 1}\n'


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, fixed_batches):
    cfg = tiny_cfg(tmp_path, max_steps=2)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    with pytest.raises(ValueError, match="--resume auto"):
        fit(cfg, GPT(get_preset("tiny")), fixed_batches())


def test_a_resumed_run_counts_the_time_of_every_session(tmp_path, fixed_batches, monkeypatch):
    """The summary's time (and the energy and CO2 made from it) covers the whole run, not only
    the session that finished it: here a first session of slowed steps, then a fast resume."""
    import time

    from gpt124m.train.step import Stepper

    run_step = Stepper.run

    def slow(self):
        time.sleep(1.0)
        run_step(self)

    monkeypatch.setattr(Stepper, "run", slow)
    cfg = tiny_cfg(tmp_path, max_steps=3, checkpoint_every=3)
    torch.manual_seed(0)
    first = fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    assert first["wall_time_s"] >= 3.0
    monkeypatch.setattr(Stepper, "run", run_step)
    resumed = dataclasses.replace(cfg, max_steps=6, resume="auto")
    begun = time.perf_counter()
    final = fit(resumed, GPT(get_preset("tiny")), fixed_batches())
    second = time.perf_counter() - begun  # the whole call, setup included
    assert first["wall_time_s"] < final["wall_time_s"] <= first["wall_time_s"] + second + 0.01
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["wall_time_s"] == final["wall_time_s"]
    # both rounded: seconds to 0.01 (0.005 / 3600 h) and hours to 1e-6 (5e-7 h)
    assert summary["device_hours"] == pytest.approx(final["wall_time_s"] / 3600, abs=2e-6)


def test_a_resumed_run_keeps_the_evaluations_its_checkpoint_recorded(tmp_path, fixed_batches):
    """Until it evaluates again, a resumed run's checkpoints and summary carry the latest
    evaluation, as the uninterrupted run's do; resumed at its last step it evaluates nothing."""
    from gpt124m.train.checkpointer import run_metadata
    from gpt124m.train.evaluators import Hooks

    source = fixed_batches(n_batches=2, seed=1)
    hooks = Hooks(val_batches=lambda: [source.next_batch() for _ in range(2)])
    cfg = tiny_cfg(tmp_path, max_steps=8, eval_every=4, checkpoint_every=2, keep_checkpoints=5)
    torch.manual_seed(0)
    whole = fit(cfg, GPT(get_preset("tiny")), fixed_batches(), hooks=hooks)
    ckpts = tmp_path / "run" / "checkpoints"
    at_6 = run_metadata(ckpts / "step_0000006")["results"]
    at_4 = run_metadata(ckpts / "step_0000004")["results"]
    assert at_6 == at_4 and set(at_6) == {"val_loss"}  # step 6 saw no evaluation of its own
    assert whole["final_val_loss"] == run_metadata(ckpts / "step_0000008")["results"]["val_loss"]

    # the run ended, then the summary was lost (say, the disk filled while writing it)
    (tmp_path / "run" / "summary.json").unlink()
    again = fit(dataclasses.replace(cfg, resume="auto"), GPT(get_preset("tiny")), fixed_batches())
    assert again["steps"] == 8 and again["final_val_loss"] == whole["final_val_loss"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["final_val_loss"] == whole["final_val_loss"]

    # a crash after step 4: the redone step 6 records the step-4 loss, as the first time did
    for step in (6, 8):
        shutil.rmtree(ckpts / f"step_{step:07d}")
    resumed = dataclasses.replace(cfg, resume="auto")
    fit(resumed, GPT(get_preset("tiny")), fixed_batches(), hooks=hooks)
    assert run_metadata(ckpts / "step_0000006")["results"] == at_6


@needs_muon
def test_a_refused_resume_leaves_the_later_timeline_in_place(tmp_path, fixed_batches):
    """Resuming from step 2 with another optimizer is refused; step 4, which such a resume
    would set aside, stays where it was (it was set aside before the refusal), and so does the
    metrics log."""
    cfg = tiny_cfg(tmp_path, max_steps=4, checkpoint_every=2)
    torch.manual_seed(0)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    ckpts = tmp_path / "run" / "checkpoints"
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    resumed = dataclasses.replace(
        cfg, resume=str(ckpts / "step_0000002"), optimizer="muon", muon_lr=0.05
    )
    with pytest.raises(ValueError, match="does not match --optimizer muon"):
        fit(resumed, GPT(get_preset("tiny")), fixed_batches())
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002", "step_0000004"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_resuming_with_a_model_of_another_shape_is_one_line(tmp_path, fixed_batches):
    """`--resume auto --model nano` on a `tiny` run: torch's size-mismatch list was a 50-line
    traceback; now one error naming the checkpoint and the way out."""
    cfg = tiny_cfg(tmp_path, max_steps=2)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    wider = dataclasses.replace(get_preset("tiny"), n_embd=64)
    with pytest.raises(ValueError, match="written for a model of another shape") as err:
        fit(dataclasses.replace(cfg, resume="auto", max_steps=3), GPT(wider), fixed_batches())
    assert "size mismatch" in str(err.value) and "\n" not in str(err.value)


def test_training_that_cannot_fit_the_host_is_refused_before_a_step(
    tmp_path, fixed_batches, monkeypatch
):
    """Its weights fit, its gradients and optimizer state do not: one line before any work, not
    the kernel's silent kill at the first step."""
    from gpt124m.train import trainer

    model = GPT(get_preset("tiny"))
    trainable = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(trainer, "available_host_memory", lambda: 8 * trainable - 1)
    cfg = tiny_cfg(tmp_path, max_steps=1, device="cpu")
    with pytest.raises(ValueError, match=f"training {trainable:,} parameters on the CPU needs"):
        fit(cfg, model, fixed_batches())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    monkeypatch.setattr(trainer, "available_host_memory", lambda: 8 * trainable)
    fit(cfg, model, fixed_batches())  # exactly enough: it trains
    assert len(train_losses(tmp_path / "run")) == 1
