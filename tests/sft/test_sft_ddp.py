"""2-rank gloo DDP `gpt124m sft` (LoRA, peft inside DDP) equals one process with the same global
batch through accumulation: the SFT loader hands each rank its own disjoint slice of every step."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run(nproc, argv, cwd):
    launcher = [sys.executable, "-m", "gpt124m"]
    if nproc > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "gpt124m",
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*launcher, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(out, kind):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_two_rank_lora_ddp_equals_one_process_with_accumulation(tmp_path, reverse_data):
    def argv(out):
        return [
            "sft", "--base", "tiny", "--data", str(reverse_data), "--out", str(out),
            "--method", "lora", "--lora-dropout", "0", "--max-lr", "1e-2",
            "--pad-to", "longest", "--val-fraction", "0.2",
            "--batch-size", "4", "--micro-batch-size", "2", "--max-steps", "3",
            "--eval-every", "3", "--sample-every", "3", "--sample-max-new-tokens", "4",
            "--checkpoint-every", "0", "--peak-flops", "1e12",
        ]  # fmt: skip

    run(1, argv(tmp_path / "one"), tmp_path)  # micro 2 x accumulation 2
    run(2, argv(tmp_path / "two"), tmp_path)  # micro 2 x 2 ranks
    one, two = tmp_path / "one", tmp_path / "two"
    for kind in ("train", "val"):
        a, b = metrics(one, kind), metrics(two, kind)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a
        assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)
    assert len(metrics(two, "samples")) == 1  # rank 0 only
    assert (two / "model" / "model.safetensors").is_file()
    assert (two / "adapter" / "adapter_model.safetensors").is_file()
