"""What `gpt124m train` tells the user, through the real command: a validation budget larger than
the val split is explained once, and $GPT124M_MAX_STEPS caps a run."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from gpt124m.data.prepare import PrepareConfig, prepare


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: " + "some words here " * 40 for i in range(30)))
    out = root / "shards"
    prepare(
        PrepareConfig(
            source=str(text),
            out_dir=str(out),
            split_lines=True,
            shard_tokens=2000,
            val_tokens=300,
            workers=1,
            progress=False,
        )
    )
    return out


def train(data_dir, out_dir, *extra, env=None):
    argv = [
        sys.executable, "-m", "gpt124m", "train",
        "--model", "tiny",
        "--data-dir", str(data_dir),
        "--out-dir", str(out_dir),
        "--seq-len", "16",
        "--micro-batch-size", "2",
        "--total-batch-tokens", "32",
        "--warmup-steps", "1",
        "--sample-every", "0",
        "--checkpoint-every", "0",
        "--precision", "fp32",
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_a_validation_budget_beyond_the_split_is_explained_once(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "run", "--max-steps", "3", "--eval-every", "1",
                   "--val-tokens", "65536")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "65,536" in line]
    assert len(lines) == 1, result.stderr
    assert "299 tokens" in lines[0] and "every evaluation reads all 299" in lines[0]
    assert "token budget" not in result.stderr
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "val" for r in records) == 4  # step 0 and after each step


def test_max_steps_environment_variable_caps_the_run(data_dir, tmp_path):
    env = {"GPT124M_MAX_STEPS": "2"}
    result = train(data_dir, tmp_path / "run", "--max-steps", "50", "--eval-every", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert "GPT124M_MAX_STEPS=2: stopping after 2 of the 50 steps" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["training"]["max_steps"] == 2  # the run records what it did

    bad = train(data_dir, tmp_path / "bad", env={"GPT124M_MAX_STEPS": "lots"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "GPT124M_MAX_STEPS='lots': must be a positive number of steps" in bad.stderr


def test_sigterm_stops_like_ctrl_c_and_says_where_to_resume(data_dir, tmp_path):
    """A scheduler's stop (SIGTERM) ends the run with one line and the checkpoint to resume
    from, not silently mid-line; `--resume auto` then continues."""
    out = tmp_path / "run"
    argv = [
        sys.executable, "-m", "gpt124m", "train", "--model", "tiny", "--data-dir", str(data_dir),
        "--out-dir", str(out), "--seq-len", "16", "--micro-batch-size", "2",
        "--total-batch-tokens", "32", "--warmup-steps", "1", "--sample-every", "0",
        "--eval-every", "0", "--precision", "fp32", "--max-steps", "100000",
        "--checkpoint-every", "3", "--log-every", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    watchdog = threading.Timer(240, proc.kill)  # a run that never logs step 4 fails, not hangs
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:  # the step lines
            seen.append(line)
            if line.startswith("step      4/"):
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        code = proc.returncode
    finally:
        watchdog.cancel()
        proc.kill()
    said = "".join(seen) + rest
    assert code == 128 + signal.SIGTERM, said
    assert "Traceback" not in said and rest.rstrip().endswith("gpt124m train: terminated"), said
    stopped = next(line for line in rest.splitlines() if line.startswith("stopped at step"))
    step = int(stopped.split()[3].rstrip(";"))
    last = max(p.name for p in (out / "checkpoints").iterdir())
    assert step >= 4 and f"the last checkpoint is {out / 'checkpoints' / last}" in stopped, said
    resumed = train(data_dir, out, "--max-steps", str(step + 1), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / last} at step" in resumed.stderr


def test_a_run_whose_log_reader_died_is_an_error_not_a_success(data_dir, tmp_path):
    """`gpt124m train ... | head -2`: the run stops, and says so; only a command whose product is
    its output (generate) ends quietly when the reader has gone."""
    argv = [
        sys.executable, "-m", "gpt124m", "train", "--model", "tiny", "--data-dir", str(data_dir),
        "--out-dir", str(tmp_path / "run"), "--seq-len", "16", "--micro-batch-size", "2",
        "--total-batch-tokens", "32", "--warmup-steps", "1", "--sample-every", "0",
        "--eval-every", "0", "--precision", "fp32", "--max-steps", "50", "--log-every", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == 2, err
    assert err.strip().splitlines()[-1] == "gpt124m train: error: [Errno 32] Broken pipe", err


def test_sigterm_is_left_to_torchrun_in_its_workers_and_restored_after(monkeypatch):
    """A rank blocked in a collective runs no Python handler: under torchrun SIGTERM keeps its
    default, which ends the process at once; called as a library, main() puts back the
    handler it found."""
    from gpt124m import cli

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["info", "--preset", "tiny"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        assert cli._terminate_as_interrupt() is cli._NOT_INSTALLED
        assert signal.getsignal(signal.SIGTERM) is mine
        monkeypatch.delenv("TORCHELASTIC_RUN_ID")
        assert cli._terminate_as_interrupt() is mine
        assert signal.getsignal(signal.SIGTERM) is cli._raise_terminated
    finally:
        signal.signal(signal.SIGTERM, previous)
