"""What the sections of bench/gpu.py share: the run context, incremental reports, step timing,
subprocesses that die with their section, and an in-memory batch source."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpt124m.atomic import atomic_write_text
from gpt124m.device import use_tf32


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Results(dict):
    """A section's figures: every assignment is written to disk at once."""

    def __init__(self, save: Callable[[], None]):
        super().__init__()
        self._save = save

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._save()

    def headline(self, key: str, value) -> None:
        """A figure for the printed summary and the Markdown's first lines."""
        self.setdefault("headline", {})[key] = value
        self._save()

    def table(self, title: str, rows: list[dict]) -> None:
        """A whole table, beside the section's others (replacing one of the same title)."""
        self.setdefault("tables", {})[title] = rows
        self._save()


@dataclasses.dataclass
class Context:
    device: torch.device
    smoke: bool
    out: Path
    work: Path
    report: dict
    deadline: float
    hellaswag_data: str | None = None
    card_gib: float = 24.0
    started: float = dataclasses.field(default_factory=time.monotonic)
    section_deadline: float = float("inf")  # set by gpu.py's run_section
    ceilings: dict[str, float] = dataclasses.field(default_factory=dict)
    # plain data one section leaves for a later one (never tensors: each section frees its own)
    carried: dict[str, dict] = dataclasses.field(default_factory=dict)

    def seconds_left(self) -> float:
        """Until the running section's budget is spent."""
        return self.section_deadline - time.monotonic()

    def ceiling(self, name: str, measure: Callable[[], float]) -> float:
        """A hardware ceiling (matmul peak, copy bandwidth), measured by the first section that
        asks for it and shared by the rest of the run."""
        if name not in self.ceilings:
            self.ceilings[name] = measure()
        return self.ceilings[name]

    def say(self, message: str) -> None:
        print(f"[gpu.py {time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def results_for(self, name: str) -> Results:
        return Results(self.save)

    def save(self) -> None:
        atomic_write_text(
            self.out / "gpu.json", json.dumps(self.report, indent=2, default=str) + "\n"
        )
        atomic_write_text(self.out / "gpu.md", markdown(self.report))

    def cleanup_device(self) -> None:
        """Free what a section left, and restore the trainer's CUDA defaults (TF32 on, no cap)."""
        use_tf32(self.device)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def amp(self) -> torch.dtype:
        return torch.bfloat16


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        "# GPU checks (bench/gpu.py)",
        "",
        f"- date: {m['date']}" + (f" (finished {m['finished']})" if "finished" in m else ""),
        f"- device: {m['device']}; torch {m['torch']} (CUDA {m['cuda']}); "
        f"transformers {m['transformers']}; Python {m['python']}",
        f"- command: `{m['command']}`" + (" (smoke: CPU, tiny shapes)" if m["smoke"] else ""),
        *(
            [f"- torch.compile of a small function on this GPU: {m['inductor']}"]
            if "inductor" in m
            else []
        ),
        "",
        "| section | status | seconds | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for name, r in report["sections"].items():
        headline = r.get("results", {}).get("headline", {})
        figures = cell("; ".join(f"{k}: {v}" for k, v in headline.items()))
        if r.get("error"):
            figures = f"**{cell(r['error'])}** " + figures
        lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {figures} |")
    if report.get("verdicts"):
        rows = [{k: v for k, v in row.items() if k != "met"} for row in report["verdicts"]]
        lines += ["", "## Targets", "", *_table(rows)]
    for name, r in report["sections"].items():
        tables = r.get("results", {}).get("tables", {})
        for title, rows in tables.items():
            lines += ["", f"## {name}: {title}", "", *_table(rows)]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    out = ["| " + " | ".join(map(cell, keys)) + " |", "|" + " --- |" * len(keys)]
    out += ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in rows]
    return out


def cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|")


def add_row(results: Results, table: str, row: dict) -> None:
    tables = results.setdefault("tables", {})
    tables.setdefault(table, []).append(row)
    results["tables"] = tables  # save


def time_steps(
    step: Callable[[], None], device: torch.device, *, warmup: int, windows: int, per_window: int
) -> dict:
    """Seconds of the first step (compilation shows up here), the median step over `windows`
    back-to-back windows of `per_window` steps (one device sync per window, as in training), and
    the peak device memory of those steps (not the warm-up's: Inductor's autotuning allocates
    copies of a compiled step's inputs while it compiles)."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(per_window):
            step()
        sync(device)
        per_step.append((time.perf_counter() - start) / per_window)
    median = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "first_step_s": first,
        "step_s": median,
        "step_s_spread": (min(per_step), max(per_step)),
        "peak_gib": None if peak is None else peak / 2**30,
    }


def run_command(
    argv: list[str], *, timeout: float, log: Path, env: dict | None = None, grace: float = 15.0
) -> tuple[int, str]:
    """Run `argv` in its own process group, its output going to `log` as it comes (so a hang
    still leaves its story); returns (exit status, output), status 124 after a timeout. On a
    timeout or an exception (the section's alarm, which then propagates) the process and all it
    started are stopped: torchrun starts its workers in sessions of their own, so the group
    gets SIGTERM (torchrun stops its workers on it), then whatever is left gets SIGKILL."""
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                _stop(proc, grace)
        if timed_out:
            print(f"\n[bench/gpu.py: stopped after {timeout:.0f} s]", file=sink, flush=True)
    return 124 if timed_out else proc.returncode, Path(log).read_text(errors="replace")


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the group, then (after `grace`) SIGKILL to the group and to every descendant
    seen at the start, wherever its session. The section's alarm, should it
    ring meanwhile, is held back until this is done, so that it cannot cut the stop short.
    (Blocking SIGALRM would not do: the kernel hands it to any of torch's threads.)"""
    family = _descendants(proc.pid)
    rang: list[int] = []
    handler = signal.signal(signal.SIGALRM, lambda signum, frame: rang.append(signum))
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    finally:
        signal.signal(signal.SIGALRM, handler)
        if rang and callable(handler):
            handler(signal.SIGALRM, None)


def _descendants(root: int) -> list[int]:
    """Process ids below `root`, read from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def gpt124m_cli() -> list[str]:
    return [sys.executable, "-m", "gpt124m"]


class RandomBatches:
    """An in-memory BatchSource of random tokens on the CPU (so the trainer's copy to the device
    is part of what is measured), with a resumable position."""

    def __init__(self, batch: int, seq_len: int, vocab: int, n: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.data = [torch.randint(0, vocab, (batch, seq_len + 1), generator=g) for _ in range(n)]
        self.i = 0

    def next_batch(self):
        b = self.data[self.i % len(self.data)]
        self.i += 1
        return b[:, :-1].contiguous(), b[:, 1:].contiguous()  # as the real loader's batches

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "train"]
