"""The GPU checks in one run: correct on CUDA, training and inference speed, a 24 GB card.

    python bench/gpu.py --out results/gpu            # one CUDA GPU, at most 6 minutes
    python bench/gpu.py --smoke --out /tmp/gpu-smoke  # the same code paths on CPU, tiny model

Sections (each independent: a failure or a timeout is recorded with its error and the next one
runs; each has a time budget, and the whole run a deadline, --budget):

1. correct_tiny     the `tiny` preset, 10 fp32 training steps on CUDA against the same on CPU
2. throughput       `gpt2`, T=1024, B=32, bf16: tokens/s, MFU (datasheet and measured matmul
                    peak) and peak memory, eager and compiled, ours and transformers'
                    GPT2LMHeadModel, and the trainer's own loop (`fit`, compiled)
3. hellaswag        scoring items/s under both conventions, projected to all 10,042 items
4. decode           greedy decode tokens/s at batch 1, 8, 64 against transformers' `generate`
5. correct_text     `gpt2`, 50 bf16 steps on the bundled corpus (prepared on the spot) with
                    --micro-batch-size auto: the loss falls; resuming from the step-25
                    checkpoint continues the curve
6. torchrun         `torchrun --nproc_per_node 1` (NCCL) under DDP and FSDP2, against one process
7. card_24gb        the process capped at a 24 GB card: the micro-batch auto picks, tokens/s there
8. kernels          the attention kernel SDPA picks for training and each backend alone, and
                    where each compiled step's time goes (kernels by kind, the largest by name)
9. decode_compiled  decode's rows again with `compiled=True` (a CUDA graph per step), batch 1, 64
10. loss            head and loss on 32 x 1024 tokens, bf16: memory and time of gpt124m's
                    linear_cross_entropy (no logits; what eager training runs) and blockwise
                    cross-entropy against F.cross_entropy on an fp32 copy, eager, and of the
                    latter compiled (what gpt124m's loss is under torch.compile)

The last three are not among the issue's figures: they give way first. A section is skipped, not
started, when less time is left than it needs (rerun it with --sections), and the issue's
sections keep the least time each needs for the ones after them.

Before them, on CUDA, one tiny function goes through torch.compile (Inductor and Triton need a
C compiler, Python's headers and libcuda there): its result heads the report, so that failed
compiled rows are explained at a glance.

Results go to OUT/gpu.json and OUT/gpu.md after every figure, so a timeout keeps what was done;
each carries the date, device, torch version and command line. At the end OUT/gpu.png pictures
training and decode speed (bench/gpu_plot.py redraws it from any gpu.json). Exit status 1 if any
section failed (targets missed are reported, not failures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings: _baseline, gpu_*

import torch  # noqa: E402
from gpu_common import Context, cell, device_name  # noqa: E402

# In running order, so that a run cut short loses the least: the headline figures (throughput)
# right after the first proof that training on CUDA is right; then the eval and decode
# figures (~40 s together), so that a slow throughput section cannot push them past the deadline;
# the longer correctness checks and the 24 GB card; last the figures the issue does not ask for.
SECTIONS = {  # name: (module, function, budget on the GPU, least seconds worth starting with)
    "correct_tiny": ("gpu_correct", "correct_tiny", 45, 15),
    "throughput": ("gpu_speed", "throughput", 220, 90),
    "hellaswag": ("gpu_infer", "hellaswag", 45, 15),
    "decode": ("gpu_infer", "decode", 60, 25),
    "correct_text": ("gpu_correct", "correct_text", 100, 35),
    "torchrun": ("gpu_correct", "torchrun", 120, 50),  # 3 runs, 2 launches (each its own limit)
    "card_24gb": ("gpu_speed", "card_24gb", 60, 20),
    "kernels": ("gpu_kernels", "section", 60, 20),
    "decode_compiled": ("gpu_infer", "decode_compiled", 90, 40),
    "loss": ("loss", "section", 45, 20),
}
# What the issue asks for: each of these keeps, for those after it, the least time they need.
ASKED = ("correct_tiny", "throughput", "hellaswag", "decode", "correct_text", "torchrun",
         "card_24gb")  # fmt: skip


def reserve_after(name: str, running: list[str]) -> int:
    """Seconds a section must leave: the least of each asked-for section still to run after it
    (an optional section keeps them as well, so none of the issue's is squeezed out)."""
    later = running[running.index(name) + 1 :]
    return sum(SECTIONS[n][3] for n in later if n in ASKED)


# The targets: (section, figure in its results, at least or at most, wanted).
TARGETS = {
    "train tokens/s (gpt2, T=1024, bf16, compiled fit loop)": (
        "throughput", "fit_tokens_per_s", ">=", 550_000),
    "train speed / transformers, both compiled": ("throughput", "ratio_compiled", ">=", 1.2),
    "full HellaSwag, both conventions (s)": ("hellaswag", "projected_s", "<=", 120),
}  # fmt: skip


def verdicts(report: dict) -> list[dict]:
    """Each target against its measured figure (None where the section did not produce it)."""
    rows = []
    for name, (section, key, op, wanted) in TARGETS.items():
        value = report["sections"].get(section, {}).get("results", {}).get(key)
        met = None if value is None else (value >= wanted if op == ">=" else value <= wanted)
        result = {True: "met", False: "MISSED", None: "not measured"}[met]
        rows.append({"target": name, "wanted": f"{op} {wanted:,}", "measured": value,
                     "result": result, "met": met})  # fmt: skip
    return rows


# What one section leaves in the scratch dir for a later one; the rest (run directories, some
# 5 GB of gpt2 checkpoints in correct_text) goes when its section ends.
SHARED_WORK = ("builtin", "decode-model")


def scratch_dir(shm: str = "/dev/shm", need_gib: float = 8) -> Path:
    """A temp dir for data and checkpoints: in memory where /dev/shm has room (the gpt2 runs
    write and hash up to 5 GB of checkpoints per section, which a slow disk would take out of
    the budget), else the system's temp dir."""
    try:
        roomy = shutil.disk_usage(shm).free >= need_gib * 2**30
    except OSError:
        roomy = False
    return Path(tempfile.mkdtemp(prefix="gpt124m-gpu-", dir=shm if roomy else None))


class SectionTimeout(BaseException):
    """Not an Exception, so that a section's own `except Exception` cannot swallow it."""


def _alarm(signum, frame):
    raise SectionTimeout("section time budget spent")


@contextlib.contextmanager
def time_limit(seconds: int):
    """SectionTimeout is raised in the block once `seconds` have passed."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def tidy(work: Path) -> None:
    """Remove what the section just run left in the scratch dir, except SHARED_WORK."""
    for entry in work.iterdir():
        if entry.name in SHARED_WORK:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()


def run_section(
    ctx: Context, name: str, budget: float, *, scratch: bool = True, reserve: float = 0
) -> None:
    """Run one section under its time budget, leaving `reserve` seconds of the run's for the
    sections after it. `scratch`: ctx.work is this run's own temp dir, tidied after each
    section (a --work folder is left as the sections wrote it)."""
    module_name, func_name, _, least = SECTIONS[name]
    record = ctx.report["sections"].setdefault(name, {})
    left = ctx.deadline - time.monotonic()
    room = left - reserve
    needs = min(budget, least)
    # A section started with less time than it needs would only be stopped midway (in a CUDA
    # graph capture, say); skipped, it is the one to rerun with --sections. One the issue asks
    # for may use the others' reserve rather than be skipped (they are equals); an optional one
    # may not.
    if (room if name not in ASKED else left) < needs:
        record.update(
            status="skipped",
            error=f"out of time ({left:.0f} s left of --budget, {reserve:.0f} of them kept for "
            f"the issue's later sections; needs {least})",
        )
        ctx.save()
        ctx.say(f"{name}: skipped, out of time")
        return
    allowed = int(min(budget, max(room, needs)))
    record.update(status="running", started=_now(), budget_s=allowed, results=ctx.results_for(name))
    ctx.save()
    ctx.say(f"{name}: start (budget {allowed} s)")
    start = time.monotonic()
    ctx.section_deadline = start + allowed
    try:
        with time_limit(allowed):
            module = __import__(module_name)
            getattr(module, func_name)(ctx, record["results"])
        record["status"] = "ok"
    except SectionTimeout as e:
        record.update(status="timeout", error=str(e))
    except Exception as e:
        record.update(
            status="error",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(limit=8).splitlines()[-12:],
        )
    finally:
        record["seconds"] = round(time.monotonic() - start, 1)
        try:
            ctx.cleanup_device()
        except Exception as e:  # a sticky CUDA error: record it; the next section will show it
            record["cleanup_error"] = f"{type(e).__name__}: {e}"
        if scratch:
            tidy(ctx.work)
        ctx.report["verdicts"] = verdicts(ctx.report)
        ctx.save()
    ctx.say(f"{name}: {record['status']} in {record['seconds']} s" + _tail(record))


def _tail(record: dict) -> str:
    return f" ({record['error']})" if record.get("error") else ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def meta(args: argparse.Namespace, device: torch.device) -> dict:
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "date": _now(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": tf_version,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "smoke": args.smoke,
    }


def inductor_check(device: torch.device, limit_s: int = 90) -> str:
    """'ok' if a small function compiles with Inductor and computes what eager does here, else
    the error. Under an alarm: Inductor's first compile starts its worker processes, and a hang
    there would otherwise hold the run before any section starts."""
    try:
        with time_limit(limit_s):
            x = torch.randn(1000, device=device)
            got = torch.compile(lambda t: (t.sin() * 2 + 1).sum())(x)
            want = (x.sin() * 2 + 1).sum()
        return "ok" if torch.allclose(got, want, rtol=1e-4, atol=1e-3) else f"wrong: {got} {want}"
    except (Exception, SectionTimeout) as e:
        return f"{type(e).__name__}: {str(e)[:300]}"


def summary_lines(report: dict) -> list[str]:
    lines, width = [], max(map(len, SECTIONS))
    for name, record in report["sections"].items():
        lines.append(
            f"{name:<{width}} {record.get('status', '?'):<8} {record.get('seconds', '')} s"
        )
        for key, value in record.get("results", {}).get("headline", {}).items():
            lines.append(f"    {key}: {value}")
    lines.append("targets:")
    for v in report["verdicts"]:
        measured = cell(v["measured"]) or "-"
        lines.append(f"    {v['target']} {v['wanted']}: {measured} ({v['result']})")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu.json, gpu.md, gpu.png (created)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset, seconds: the CI check")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--budget", type=float, default=360, help="seconds for the whole run")
    p.add_argument(
        "--section-budget", type=int, help="seconds for every section (default: each its own)"
    )
    p.add_argument(
        "--work",
        help="scratch folder for data and checkpoints (default: a temp dir, in /dev/shm when "
        "it has 8 GiB free; a --work folder is kept as the sections leave it)",
    )
    p.add_argument("--hellaswag-data", help="a local HellaSwag file (default: synthetic items)")
    p.add_argument("--card-gib", type=float, default=24.0, help="card_24gb: the card's memory")
    args = p.parse_args()

    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        # With an index: some torch.cuda calls (set_per_process_memory_fraction) refuse a bare
        # "cuda" device instead of reading it as the current one.
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        print("bench/gpu.py: no CUDA device here; use --smoke for the CPU check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else scratch_dir()
    work.mkdir(parents=True, exist_ok=True)
    report = {"meta": {**meta(args, device), "scratch": str(work)}, "sections": {}, "verdicts": []}
    ctx = Context(
        device=device,
        smoke=args.smoke,
        out=out,
        work=work,
        report=report,
        deadline=time.monotonic() + args.budget,
        hellaswag_data=args.hellaswag_data,
        card_gib=args.card_gib,
    )
    ctx.say(f"{report['meta']['device']}, torch {torch.__version__}; results in {out}")
    ctx.cleanup_device()
    if device.type == "cuda":
        report["meta"]["inductor"] = inductor_check(device)
        ctx.say(f"torch.compile (Inductor, Triton) on this GPU: {report['meta']['inductor']}")
    ctx.save()
    running = [n for n in SECTIONS if n in args.sections]  # always in running order
    for name in running:
        budget = args.section_budget or SECTIONS[name][2] * (3 if args.smoke else 1)
        reserve = reserve_after(name, running)
        run_section(ctx, name, budget, scratch=not args.work, reserve=reserve)
    report["meta"]["finished"] = _now()
    report["verdicts"] = verdicts(report)
    ctx.save()
    try:
        import gpu_plot

        gpu_plot.save(report, out / "gpu.png")
    except Exception as e:  # the figures are in gpu.json; `bench/gpu_plot.py` redraws
        ctx.say(f"gpu.png not drawn: {type(e).__name__}: {e}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(["", "summary:", *summary_lines(report)]), flush=True)
    files = {"json": "gpu.json", "markdown": "gpu.md", "plot": "gpu.png"}
    print(
        json.dumps({kind: str(out / name) for kind, name in files.items() if (out / name).exists()})
    )
    failed = [n for n, r in report["sections"].items() if r.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except SystemExit as e:  # argparse: --help, a bad flag
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except BaseException:
        traceback.print_exc()  # the results written so far are on disk
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave without the interpreter's exit handlers: the one that shuts Inductor's compile
        # workers down can wait minutes for them (pytorch/pytorch#162199), device time this
        # run does not have.
        os._exit(code)
