"""The exact-resume promise: 2N steps == N steps, SIGKILL, --resume auto, N more steps.

Also: 2-rank gloo DDP equals one process with the same global batch via accumulation.
These run the real CLI in subprocesses (and torchrun for 2 ranks) on a tiny model.
"""

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpt124m.data.prepare import PrepareConfig, prepare

from ..conftest import needs_muon

pytestmark = pytest.mark.slow(seconds=150)  # the file

N = 6  # steps before the kill; the run is 2N steps long


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(40):
        words = " ".join(f"word{(i * 7 + j * 3) % 97}" for j in range(120))
        (docs / f"doc{i:03d}.txt").write_text(f"Document {i}. {words}\n")
    out = root / "shards"
    prepare(
        PrepareConfig(
            source=str(docs), out_dir=str(out), shard_tokens=4000, val_tokens=2000, workers=1
        )
    )
    return out


def train_argv(data_dir, out_dir, *extra):
    return [
        "train",
        "--model", "tiny",
        "--data-dir", str(data_dir),
        "--out-dir", str(out_dir),
        "--seq-len", "32",
        "--micro-batch-size", "4",
        "--total-batch-tokens", "256",
        "--max-steps", str(2 * N),
        "--warmup-steps", "2",
        "--max-lr", "3e-3",
        "--dropout", "0.1",
        "--checkpoint-every", str(N),
        "--eval-every", "0",
        "--sample-every", "0",
        "--precision", "fp32",
        *extra,
    ]  # fmt: skip


def launcher(nproc, script=None):
    """`python -m gpt124m`, or torchrun of it; `script` runs in place of the module."""
    target = [script] if script else ["-m", "gpt124m"]
    if nproc == 1:
        return [sys.executable, *target]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *target,
    ]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def losses(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def run_to_end(argv, nproc):
    proc = subprocess.run(
        launcher(nproc) + argv, env=env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # what failed, not only that it did


def run_and_kill_after_step(argv, nproc, step, pid_dir, deadline_s=240):
    """Start training through `paused_train.py`, which stops the run for good once `step` is
    logged; SIGKILL every process of it then. Every read has a deadline."""
    marker = f"step {step:>6}/"
    script = str(Path(__file__).with_name("paused_train.py"))
    proc = subprocess.Popen(
        launcher(nproc, script) + argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env(), "PAUSE_AFTER_LINE": marker, "PAUSE_PID_DIR": str(pid_dir)},
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    end = time.monotonic() + deadline_s
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no pause after {marker!r} within {deadline_s} s:\n" + "".join(seen))
            if line is None:
                pytest.fail(f"the run ended before {marker!r}:\n" + "".join(seen))
            seen.append(line)
            if line.startswith(f"paused after: {marker}"):
                break
    finally:
        for pid_file in pid_dir.iterdir():  # the workers (torchrun's, or the one process)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.name), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and the launcher
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert len(list(pid_dir.iterdir())) == nproc


# AdamW's state on one process, DDP's two ranks (with Muon, whose state is the larger), and
# FSDP2's sharded AdamW: each resume path once, which keeps the suite in its time budget.
@pytest.mark.parametrize(
    "nproc, parallel, optimizer",
    [(1, "ddp", "adamw"), (2, "fsdp", "adamw"), pytest.param(2, "ddp", "muon", marks=needs_muon)],
)
def test_sigkill_then_resume_is_bit_exact(tmp_path, data_dir, nproc, parallel, optimizer):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    extra = ("--parallel", parallel, "--optimizer", optimizer)
    run_to_end(train_argv(data_dir, straight, *extra), nproc)
    pids = tmp_path / "pids"
    pids.mkdir()
    run_and_kill_after_step(train_argv(data_dir, interrupted, *extra), nproc, N + 1, pids)
    # killed after step N + 1 was logged: the resume from checkpoint N must redo it
    assert [s for s, _ in losses(interrupted)] == list(range(1, N + 2))
    run_to_end(train_argv(data_dir, interrupted, "--resume", "auto", *extra), nproc)
    expected = losses(straight)
    assert len(expected) == 2 * N
    assert losses(interrupted) == expected  # float equality: bit for bit


def test_two_ranks_equal_one_process_with_accumulation(tmp_path, data_dir):
    """DDP and FSDP2 on 2 gloo ranks both match one process accumulating 2 micro-batches."""
    one = tmp_path / "one"
    run_to_end(train_argv(data_dir, one, "--dropout", "0.0"), 1)  # accum 2
    expected = losses(one)
    for parallel in ("ddp", "fsdp"):
        two = tmp_path / parallel
        run_to_end(train_argv(data_dir, two, "--dropout", "0.0", "--parallel", parallel), 2)
        got = losses(two)
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], abs=1e-5), parallel
    # FSDP checkpoints gather full weights: the final model is a normal model directory
    from gpt124m.loading import load_model

    assert load_model(tmp_path / "fsdp" / "model").config.n_layer == 2
