"""bench/gpu.py's housekeeping for its one run on scarce device time: scratch space freed after
each section, no hang before the first section, no compile started that the time left cannot
finish."""

import argparse
import sys
import time
import types

import torch

from .conftest import bench_module


def _context(tmp_path, seconds: float):
    gpu_common, cpu = bench_module("gpu_common"), torch.device("cpu")
    work = tmp_path / "work"
    work.mkdir()
    meta = bench_module("gpu").meta(argparse.Namespace(smoke=True), cpu)
    return gpu_common.Context(
        device=cpu, smoke=True, out=tmp_path, work=work,
        report={"meta": meta, "sections": {}, "verdicts": []}, deadline=time.monotonic() + seconds,
    )  # fmt: skip


def test_a_section_leaves_only_what_later_sections_share(tmp_path, monkeypatch):
    gpu = bench_module("gpu")

    def writes_runs(ctx, results):
        (ctx.work / "builtin").mkdir()  # the prepared corpus: correct_text and torchrun share it
        (ctx.work / "decode-model").mkdir()  # decode's weights, for decode_compiled
        (ctx.work / "text-straight" / "checkpoints").mkdir(parents=True)
        (ctx.work / "stray.bin").write_bytes(b"\0" * 10)
        results["wrote"] = True

    monkeypatch.setitem(sys.modules, "fake_section", types.SimpleNamespace(write=writes_runs))
    monkeypatch.setitem(gpu.SECTIONS, "fake", ("fake_section", "write", 30, 1))
    ctx = _context(tmp_path, 60)
    gpu.run_section(ctx, "fake", 30)
    assert ctx.report["sections"]["fake"]["status"] == "ok"
    assert sorted(p.name for p in ctx.work.iterdir()) == ["builtin", "decode-model"]
    # a --work folder the user named is left as the sections wrote it
    (ctx.work / "text-straight").mkdir()
    gpu.run_section(ctx, "fake", 30, scratch=False)
    assert ctx.report["sections"]["fake"]["status"] == "error"  # mkdir of what exists
    assert (ctx.work / "text-straight").is_dir()


def test_a_compile_check_that_hangs_is_reported_not_waited_for(monkeypatch):
    gpu = bench_module("gpu")

    def hangs(fn):
        time.sleep(30)

    monkeypatch.setattr(torch, "compile", hangs)
    start = time.monotonic()
    assert gpu.inductor_check(torch.device("cpu"), limit_s=1).startswith("SectionTimeout")
    assert time.monotonic() - start < 5


def test_compiled_decoding_starts_no_compile_the_time_left_cannot_finish(tmp_path, monkeypatch):
    gpu_infer = bench_module("gpu_infer")
    compiles = []
    monkeypatch.setattr(gpu_infer, "time_compiled", lambda *a: compiles.append(a))
    ctx = _context(tmp_path, 600)
    config, prompt_len, _ = gpu_infer._shape(ctx)
    gpu_infer._same_weights(ctx, config)  # the decode section's saved weights
    ctx.carried["decode"] = {1: (1.0, 1.0, [[0] * 4], [[0] * prompt_len], 1.0)}
    ctx.section_deadline = time.monotonic() + gpu_infer.COMPILE_ONE_BATCH_S - 5
    results = bench_module("gpu_common").Results(lambda: None)
    gpu_infer.decode_compiled(ctx, results)
    assert compiles == [] and results["skipped"] == {1: "out of time"}


def test_optional_sections_leave_the_issues_later_sections_their_time(tmp_path, monkeypatch):
    """The issue's sections keep the least time each later one needs: an optional section that
    would eat into it is skipped, an asked-for one runs, shortened to what the others leave."""
    gpu = bench_module("gpu")
    budgets = {}

    def note(ctx, results):  # whole seconds, rounded down as the alarm's are
        budgets[ctx.current] = ctx.section_deadline - time.monotonic()

    running = ["throughput", "kernels", "torchrun", "card_24gb"]
    for name in running:
        monkeypatch.setitem(gpu.SECTIONS, name, ("fake_section", "note", 300, 20))
    monkeypatch.setitem(sys.modules, "fake_section", types.SimpleNamespace(note=note))
    assert gpu.reserve_after("throughput", running) == 40  # torchrun + card_24gb, not kernels
    assert gpu.reserve_after("kernels", running) == 40
    assert gpu.reserve_after("card_24gb", running) == 0
    ctx = _context(tmp_path, 100)
    for name in ("throughput", "kernels"):
        ctx.current = name
        gpu.run_section(ctx, name, 300, reserve=gpu.reserve_after(name, running))
    assert 58 < budgets["throughput"] <= 60  # 100 s left, 40 kept
    assert ctx.report["sections"]["kernels"]["status"] == "ok" and 58 < budgets["kernels"] <= 60
    ctx.deadline = time.monotonic() + 50  # 50 s left: kernels may not take the 40 kept
    gpu.run_section(ctx, "kernels", 300, reserve=40)
    assert ctx.report["sections"]["kernels"]["status"] == "skipped"
    assert "40 of them kept" in ctx.report["sections"]["kernels"]["error"]
    ctx.current = "torchrun"  # an asked-for one runs on the least it needs, eating into the 20
    ctx.deadline = time.monotonic() + 30  # kept for card_24gb
    gpu.run_section(ctx, "torchrun", 300, reserve=20)
    assert ctx.report["sections"]["torchrun"]["status"] == "ok"
    assert 18 < budgets["torchrun"] <= 20
