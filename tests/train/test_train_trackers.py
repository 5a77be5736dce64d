import json
import sys
import time
import types

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import loggers
from gpt124m.train.trainer import fit


def jsonl_losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_tensorboard_gets_the_same_scalars_as_the_metrics_log(tmp_path, fixed_batches, run_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    fit(run_config(tmp_path, tensorboard=True), GPT(get_preset("tiny")), fixed_batches())
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4]
    assert [e.value for e in scalars] == pytest.approx(jsonl_losses(tmp_path / "run"), rel=1e-6)
    assert "train/lr" in events.Tags()["scalars"]


def test_wandb_offline_run_records_the_losses(tmp_path, fixed_batches, monkeypatch, run_config):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    fit(
        run_config(tmp_path, wandb_project="gpt124m-test"), GPT(get_preset("tiny")), fixed_batches()
    )
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # the offline run `wandb sync` would upload
    # wandb's service process writes the file: on a loaded machine it may still be flushing
    # after `finish()` returns, so give it time before reading
    deadline = time.monotonic() + 60
    while b"train/grad_norm" not in (data := runs[0].read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"train/loss" in data and b"train/grad_norm" in data
    assert b"gpt124m-test" in data


def fake_wandb(monkeypatch, *, logged_in: bool, init_error: str = "unreachable"):
    """A `wandb` module that records `login`'s arguments; `init` raises, as real wandb does when
    it cannot reach its server, a `wandb.errors.CommError` saying `init_error`."""
    errors = types.SimpleNamespace(Error=type("Error", (Exception,), {}))
    errors.CommError = type("CommError", (errors.Error,), {})
    calls = []

    def login(**kwargs):
        calls.append(kwargs)
        return logged_in

    def init(**kwargs):
        raise errors.CommError(init_error)

    module = types.SimpleNamespace(login=login, init=init, errors=errors)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(loggers, "_wandb_mode", lambda: "online")
    return module, calls


def test_wandb_login_is_looked_up_without_a_prompt(monkeypatch):
    _, calls = fake_wandb(monkeypatch, logged_in=False)
    with pytest.raises(ValueError, match="no W&B login; run `wandb login`.*WANDB_MODE=offline"):
        loggers.check_trackers(tensorboard=False, wandb_project="p")
    assert calls == [{"prompt": False, "verify": False}]
    monkeypatch.setattr(loggers, "_wandb_mode", lambda: "offline")  # no login needed
    loggers.check_trackers(tensorboard=False, wandb_project="p")
    assert len(calls) == 1


def test_wandb_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    """A refused key or no network: wandb's own exception types, multi-line, become one line."""
    error = "Timed out while retrying: no such host\n  (page of detail)"
    fake_wandb(monkeypatch, logged_in=True, init_error=error)
    with pytest.raises(ValueError) as raised:
        loggers.WandbTracker("p", tmp_path, {})
    assert str(raised.value) == (
        "--wandb-project p: W&B did not start: CommError: Timed out while retrying: no such host "
        "(WANDB_MODE=offline logs locally)"
    )
