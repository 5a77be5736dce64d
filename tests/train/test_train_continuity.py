"""A resume continues its run: settings that define the run are refused when changed, settings
that steer it are logged, and a refusal leaves the run's folder as it was."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import continuity
from gpt124m.train.trainer import fit

from ..conftest import FixedBatches, snapshot, tiny_run_config


@pytest.fixture
def stopped_run(tmp_path):
    """A 4-step run with checkpoints at steps 2 and 4, its last one then lost (a crash)."""
    import shutil

    cfg = tiny_run_config(tmp_path, checkpoint_every=2, dropout=0.1)
    torch.manual_seed(0)
    fit(cfg, GPT(get_preset("tiny")), FixedBatches(n_batches=3))
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000004")
    return dataclasses.replace(cfg, resume="auto")


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"dropout": 0.0}, "--dropout 0.1, not 0.0"),
        ({"total_batch_tokens": 256}, "--total-batch-tokens 128, not 256"),
        ({"max_steps": 1}, r"this run ends at step 1 \(--max-steps, .* is already at step 2"),
    ],
)
def test_a_resume_that_would_change_the_run_is_refused_and_changes_nothing(
    stopped_run, tmp_path, change, flag
):
    before = snapshot(tmp_path / "run")
    with pytest.raises(ValueError, match=flag):
        fit(dataclasses.replace(stopped_run, **change), GPT(get_preset("tiny")), FixedBatches(3))
    assert snapshot(tmp_path / "run") == before


def test_a_resume_with_a_new_learning_rate_runs_and_says_so(stopped_run, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt124m.train.continuity"):
        summary = fit(
            dataclasses.replace(stopped_run, max_lr=3e-4, max_steps=5),
            GPT(get_preset("tiny")),
            FixedBatches(3),
        )
    assert summary["steps"] == 5
    [record] = [r for r in caplog.records if r.name == "gpt124m.train.continuity"]
    assert "step_0000002" in record.getMessage()
    assert "--max-steps 4 -> 5" in record.getMessage()
    assert "--max-lr 0.0006 -> 0.0003" in record.getMessage()


def test_an_unchanged_resume_says_nothing(stopped_run, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt124m.train.continuity"):
        fit(stopped_run, GPT(get_preset("tiny")), FixedBatches(3))
    assert not [r for r in caplog.records if r.name == "gpt124m.train.continuity"]


def test_a_checkpoint_is_resumed_by_the_command_that_wrote_it():
    pretraining = {"total_batch_tokens": 128, "dropout": 0.0}
    sft = {**pretraining, "method": "lora", "batch_size": 4, "lora_alpha": 8}
    with pytest.raises(
        ValueError, match="is a pretraining checkpoint: resume it with `gpt124m train`"
    ):
        continuity.check(sft, pretraining, 2, "ckpt")
    with pytest.raises(ValueError, match="is an SFT checkpoint: resume it with `gpt124m sft`"):
        continuity.check(pretraining, sft, 2, "ckpt")
    with pytest.raises(ValueError, match="--lora-alpha 8, not 32"):
        continuity.check({**sft, "lora_alpha": 32}, sft, 2, "ckpt")
    # SFT's token count follows from flags it has: the one changed is named, not the count
    padded = {**sft, "pad_to": "block", "total_batch_tokens": 4096}
    with pytest.raises(ValueError, match="--pad-to block, not longest"):
        continuity.check(
            {**padded, "pad_to": "longest", "total_batch_tokens": 1200}, padded, 2, "c"
        )
    # a full fine-tune has no adapters: their settings do not matter
    full = {**sft, "method": "full", "lora_r": 8}
    assert continuity.check({**full, "lora_r": 16, "lora_alpha": 32}, full, 2, "ckpt") == []
    # a record from before a key existed checks only what it has
    assert continuity.check(pretraining, {"dropout": 0.0}, 2, "ckpt") == []


def test_a_state_file_that_holds_code_is_refused_in_a_line(stopped_run, tmp_path):
    """A checkpoint whose optimizer.pt pickles an object (and whose hashes were made to match):
    refused by `weights_only`, in one line that does not suggest turning it off."""
    import json

    from gpt124m.data.shards import sha256_file

    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    torch.save({"optimizer": argparse.Namespace(payload=1), "scaler": None}, ckpt / "optimizer.pt")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["sha256"]["optimizer.pt"] = sha256_file(ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="optimizer.pt: refused") as caught:
        fit(stopped_run, GPT(get_preset("tiny")), FixedBatches(3))
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
