"""bench/gpu.py's card_24gb section when the micro-batch `auto` chose runs out of memory in the
longer timed run: the report says so and times the next smaller micro-batch instead."""

import time

import torch

from .conftest import bench_module


def test_an_oom_at_the_chosen_micro_batch_is_reported_and_halved(tmp_path, monkeypatch):
    gpu_speed, gpu_common = bench_module("gpu_speed"), bench_module("gpu_common")
    real, timed = gpu_speed._time_micro_batch, []

    def first_runs_out(model, micro, *args):
        timed.append(micro)
        if len(timed) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, micro, *args)

    monkeypatch.setattr(gpu_speed, "_time_micro_batch", first_runs_out)
    ctx = gpu_common.Context(
        device=torch.device("cpu"), smoke=True, out=tmp_path, work=tmp_path,
        report={"sections": {}}, deadline=time.monotonic() + 300,
    )  # fmt: skip
    results = gpu_common.Results(lambda: None)
    gpu_speed.card_24gb(ctx, results)
    chosen = max(t["micro-batch"] for t in results["tables"]["auto trials"] if t["fits"])
    assert timed == [chosen, chosen // 2] and results["chosen_oom"] == chosen
    (row,) = results["tables"]["at the chosen micro-batch (eager, AdamW after each: a floor)"]
    assert row["micro-batch"] == chosen // 2 and row["tokens/s"] > 0
    assert results["headline"]["OUT OF MEMORY at the chosen micro-batch"] == chosen
