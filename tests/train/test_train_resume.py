"""The exact-resume promise: 2N steps == N steps, SIGKILL, --resume auto, N more steps.

Also: 2-rank gloo DDP equals one process with the same global batch via accumulation.
These run the real CLI in subprocesses (and torchrun for 2 ranks) on a tiny model.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from gpt124m.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow

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


def launcher(nproc):
    if nproc == 1:
        return [sys.executable, "-m", "gpt124m"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gpt124m",
    ]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def losses(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def run_to_end(argv, nproc):
    subprocess.run(launcher(nproc) + argv, check=True, env=env(), capture_output=True, timeout=240)


def run_and_kill_after_step(argv, nproc, step):
    """Start training, SIGKILL its whole process group as soon as `step` has been logged."""
    proc = subprocess.Popen(
        launcher(nproc) + argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        start_new_session=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"step {step + 1:>6}/"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL or proc.returncode != 0, "".join(seen)
    assert any(line.startswith(f"step {step + 1:>6}/") for line in seen), "".join(seen)


@pytest.mark.parametrize(
    "nproc, parallel, optimizer",
    [(1, "ddp", "adamw"), (2, "ddp", "adamw"), (2, "fsdp", "adamw"), (2, "ddp", "muon")],
)
def test_sigkill_then_resume_is_bit_exact(tmp_path, data_dir, nproc, parallel, optimizer):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    extra = ("--parallel", parallel, "--optimizer", optimizer)
    run_to_end(train_argv(data_dir, straight, *extra), nproc)
    run_and_kill_after_step(train_argv(data_dir, interrupted, *extra), nproc, step=N)
    killed_at = losses(interrupted)
    assert N + 1 <= max(s for s, _ in killed_at) < 2 * N  # it died part-way through
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
    from gpt124m.checkpoint import load_model

    assert load_model(tmp_path / "fsdp" / "model").config.n_layer == 2
