"""bench/gpu.py cannot rot: its --smoke mode runs every section's code path on CPU (tiny shapes),
and a failing section is recorded while the others still run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import needs_compiler
from .conftest import BENCH, bench_module

SCRIPT = BENCH / "gpu.py"


def smoke(out: Path, *args: str, timeout: int = 540) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = json.loads((out / "gpu.json").read_text())
    return proc.returncode, report, proc.stdout + proc.stderr


@pytest.mark.slow(seconds=120)
def test_every_section_runs_on_cpu_and_reports(tmp_path):
    code, report, output = smoke(tmp_path / "out")
    sections = report["sections"]
    assert {n: r["status"] for n, r in sections.items()} == dict.fromkeys(
        ["correct_tiny", "correct_text", "torchrun", "card_24gb", "loss", "hellaswag",
         "decode", "decode_compiled", "throughput", "kernels"], "ok"
    ), output  # fmt: skip
    assert code == 0, output
    meta = report["meta"]
    assert meta["smoke"] and meta["torch"] and "--smoke" in meta["command"] and meta["date"]

    def table(section, prefix):
        tables = sections[section]["results"]["tables"]
        return next(rows for title, rows in tables.items() if title.startswith(prefix))

    # CPU against CPU is exact; the text run learned and resumed onto its own curve
    assert table("correct_tiny", "3 fp32 steps")[0]["max |loss diff|"] == 0
    text = sections["correct_text"]["results"]
    assert text["losses"]["6"] < text["losses"]["1"]
    assert text["resume"] == {"steps": [4, 5, 6], "max_abs_diff": 0.0}
    # torchrun with one process really ran DDP and FSDP2 (gloo here) and matched one process
    for row in table("torchrun", "torchrun --nproc_per_node 1"):
        assert row["process group"] == "gloo" and row["exit"] == 0 and row["steps"] == 2
        assert row["max |loss diff| vs one process"] <= 1e-6
    # auto on the trial path: the whole 8-sequence batch fits on CPU
    assert sections["card_24gb"]["results"]["tables"]["auto trials"][0]["micro-batch"] == 8
    # head and loss, eager three ways and compiled (what each keeps: tests/test_loss.py)
    copy, blockwise, no_logits, compiled = table("loss", "head and loss on 2 x 64")
    assert copy["loss"].startswith("head + F.cross_entropy") and "blockwise" in blockwise["loss"]
    assert no_logits["loss"].startswith("gpt124m linear_cross_entropy")
    assert compiled["loss"].endswith("+ compile") and compiled["compile s"] > 0
    assert all(r["fwd+bwd ms"] > 0 and r["kept for backward MiB"] > 0 for r in table("loss", ""))
    kept = [r["kept for backward MiB"] for r in (no_logits, blockwise, copy)]
    assert kept == sorted(kept) and kept[0] < kept[2] / 2, kept
    assert [r["batch"] for r in table("decode", "greedy decode")] == [1, 8, 64]
    assert all(r["gpt124m share of memory floor"] > 0 for r in table("decode", "greedy decode"))
    (compiled,) = table("decode_compiled", "greedy decode compiled")  # batch 1 in the smoke run
    assert compiled["rows equal to eager"] == "1/1" and compiled["first call s (compile)"] > 0
    assert sections["throughput"]["results"]["peaks"]["measured_copy_bytes_per_s"] > 1e8
    rows = table("throughput", "training step")
    assert [r["implementation"] for r in rows] == [
        "gpt124m",
        "gpt124m + compile",
        "gpt124m fit() loop",
        "transformers + compile",
        "transformers",
    ]  # fmt: skip
    assert all(r["tokens/s"] > 0 for r in rows)
    kernels = sections["kernels"]["results"]
    assert kernels["flash_attention"] is True
    assert kernels["attention_backend"] == "flash_attention"  # on CPU
    # each backend alone: the CPU has the flash kernel only; the GPU ones are reported missing
    default, *alone = kernels["tables"]["attention backends (fwd+bwd)"]
    assert default["fwd+bwd ms"] > 0
    assert [r["backend"] for r in alone] == ["flash_attention", "cudnn_attention",
                                              "efficient_attention"]  # fmt: skip
    assert alone[0]["fwd+bwd ms"] > 0 and alone[1]["fwd+bwd ms"] is None and alone[1]["note"]
    # each compiled configuration's step broken down by kind of kernel (operator, on the CPU)
    for name in ("gpt124m + compile", "transformers + compile"):
        kinds = {r["kind"]: r["share"] for r in table("kernels", f"time by kind: {name}")}
        assert kinds["matmul"] > 0 and sum(kinds.values()) == pytest.approx(1.0), kinds
        assert table("kernels", f"largest kernels: {name}")
    # each target is judged on the figure its section measured (missed here: a CPU, tiny shapes)
    verdicts = {v["target"]: v for v in report["verdicts"]}
    fit_row = next(r for r in rows if r["implementation"] == "gpt124m fit() loop")
    assert (
        verdicts["train tokens/s (gpt2, T=1024, bf16, compiled fit loop)"]["measured"]
        == (fit_row["tokens/s"])
    )
    hellaswag = table("hellaswag", "HellaSwag scoring")[0]["projected s for 10,042 items"]
    assert verdicts["full HellaSwag, both conventions (s)"]["measured"] == hellaswag
    assert all(v["met"] in (True, False) for v in verdicts.values()), verdicts
    markdown = (tmp_path / "out" / "gpu.md").read_text()
    assert "| throughput | ok |" in markdown and meta["device"] in markdown
    assert "## Targets" in markdown and "compiled fit loop" in markdown
    assert (tmp_path / "out" / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the picture's decode panel finds every series in the tables the run wrote
    series = bench_module("gpu_plot")._decode_series(report)
    assert {name: sorted(points) for name, points in series.items()} == {
        "gpt124m": [1, 8, 64], "transformers generate": [1, 8, 64], "gpt124m compiled": [1]
    }  # fmt: skip


def test_the_plot_is_redrawn_from_a_report_and_bad_input_is_one_line(tmp_path):
    gpu_plot = bench_module("gpu_plot")
    report = {
        "meta": {"device": "NVIDIA H200", "torch": "2.11.0", "date": "2026-12-06"},
        "sections": {
            "throughput": {"results": {"shape": {"preset": "gpt2", "batch": 32, "seq": 1024},
                "tables": {"training step": [{"implementation": "gpt124m + compile",
                                              "tokens/s": 412_000.0}]}}},
            "decode": {"results": {"tables": {
                "greedy decode, prompt 64, 128 new tokens, bf16": [
                    {"batch": 1, "gpt124m tok/s": 300.0, "transformers tok/s": 200.0}]}}},
            "decode_compiled": {"results": {"tables": {
                "greedy decode compiled (compiled=True), prompt 64, 128 new tokens, bf16": [
                    {"batch": 1, "compiled tok/s": 900.0}]}}},
        },
    }  # fmt: skip
    assert gpu_plot._decode_series(report) == {
        "gpt124m": {1: 300.0}, "transformers generate": {1: 200.0}, "gpt124m compiled": {1: 900.0}
    }  # fmt: skip
    source = tmp_path / "gpu.json"
    source.write_text(json.dumps(report))
    plot = [sys.executable, str(BENCH / "gpu_plot.py")]
    done = subprocess.run([*plot, str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "gpu.png").read_bytes()[:4] == b"\x89PNG"
    source.write_text(json.dumps({"meta": {}, "sections": {}}))
    done = subprocess.run([*plot, str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "nothing to draw" in done.stdout
    source.write_text("{not json")
    done = subprocess.run([*plot, str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot read" in done.stderr


def test_a_failing_section_is_recorded_and_the_rest_still_runs(tmp_path):
    missing = tmp_path / "no-such-hellaswag.jsonl"
    code, report, output = smoke(
        tmp_path / "out",
        "--sections", "hellaswag", "correct_tiny",
        "--hellaswag-data", str(missing),
        timeout=240,
    )  # fmt: skip
    hellaswag, tiny = report["sections"]["hellaswag"], report["sections"]["correct_tiny"]
    assert hellaswag["status"] == "error" and str(missing) in hellaswag["error"], output
    assert tiny["status"] == "ok", output
    assert code == 1
    assert "**FileNotFoundError" in (tmp_path / "out" / "gpu.md").read_text()


def test_a_section_out_of_time_stops_as_a_timeout(tmp_path):
    """The section's alarm is not an Exception: the throughput section's own error handling
    (one configuration failing leaves the others) must not swallow it and run on. (In the smoke
    run the configurations take from ~0.3 s to 2-10 s of the section, so a 1 s alarm lands in
    them.)"""
    code, report, output = smoke(
        tmp_path / "out", "--sections", "throughput", "--section-budget", "1", timeout=240
    )
    throughput = report["sections"]["throughput"]
    assert throughput["status"] == "timeout", output
    assert throughput["seconds"] < 15 and code == 1, output


def test_a_section_is_not_started_with_less_time_than_it_needs(tmp_path):
    """torchrun needs 50 s: with 40 left of the run it is skipped (to rerun with --sections),
    not started only to be stopped midway."""
    code, report, output = smoke(
        tmp_path / "out", "--sections", "torchrun", "--budget", "40", timeout=120
    )
    torchrun = report["sections"]["torchrun"]
    assert torchrun["status"] == "skipped" and "needs 50" in torchrun["error"], output
    assert not (tmp_path / "out" / "torchrun-ddp.log").exists()
    assert code == 1


def test_compiled_decoding_without_the_eager_rows_says_what_it_needs(tmp_path):
    code, report, output = smoke(tmp_path / "out", "--sections", "decode_compiled", timeout=120)
    compiled = report["sections"]["decode_compiled"]
    assert compiled["status"] == "error" and "decode section" in compiled["error"], output
    assert code == 1


# A stand-in for torchrun: it starts its worker in a session of its own (as torchrun does), so
# killing torchrun's process group alone would leave the worker holding the GPU.
LAUNCHER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                          start_new_session=True)
print("launcher", os.getpid(), "worker", worker.pid, flush=True)
time.sleep(600)
"""


def run_command(*args, **kwargs):
    return bench_module("gpu_common").run_command(*args, **kwargs)


def pids(output: str) -> tuple[int, int]:
    """The launcher's and its worker's process ids, as the launcher printed them."""
    assert "worker " in output, output  # the launcher got as far as starting it
    words = output.split("launcher ")[1].split()
    return int(words[0]), int(words[2])


def gone(pid: int) -> bool:
    """Dead within 5 s (the kill is delivered at once; reaping by init can lag a little), or
    killed here so that a failing test leaves nothing behind."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z":  # a zombie waiting for its parent or init to reap it
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return False


def test_a_timed_out_command_is_stopped_with_the_workers_it_started(tmp_path):
    start = time.monotonic()
    code, output = run_command(
        [sys.executable, "-c", LAUNCHER], timeout=5, log=tmp_path / "launcher.log", grace=2
    )
    assert code == 124 and "stopped after 5 s" in output, output
    assert time.monotonic() - start < 30
    launcher, worker = pids(output)
    assert [gone(launcher), gone(worker)] == [True, True]  # both checked: none left behind


def test_the_sections_alarm_during_a_stop_waits_for_it_to_finish(tmp_path):
    """A launcher that ignores SIGTERM, and the section's alarm firing during the grace period:
    the stop still ends with SIGKILL for the launcher and its worker, then the alarm is raised."""

    class Alarm(BaseException):
        pass

    def ring(signum, frame):
        raise Alarm

    stubborn = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LAUNCHER
    log = tmp_path / "launcher.log"
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(3)  # during the 4 s grace that follows the 1 s timeout
    try:
        with pytest.raises(Alarm):
            run_command([sys.executable, "-c", stubborn], timeout=1, log=log, grace=4)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    launcher, worker = pids(log.read_text())
    assert [gone(launcher), gone(worker)] == [True, True]  # both checked: none left behind


@pytest.mark.slow
@needs_compiler
def test_the_compile_check_passes_where_inductor_works_and_names_the_error_where_not(
    tmp_path, monkeypatch
):
    """The check that heads a GPU report (run here on the CPU, where Inductor builds C++)."""
    import torch

    gpu = bench_module("gpu")
    assert gpu.inductor_check(torch.device("cpu")) == "ok"

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable")

    monkeypatch.setattr(torch, "compile", broken)
    assert gpu.inductor_check(torch.device("cpu")).startswith("RuntimeError: Failed to find C")
