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
