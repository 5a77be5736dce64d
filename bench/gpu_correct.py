"""bench/gpu.py sections 1-3: the trainer is correct on CUDA, on text, across a resume, and
under torchrun (NCCL) with DDP and FSDP2."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from gpu_common import Context, RandomBatches, Results, add_row, run_command, train_records

from gpt124m.cli import main as cli
from gpt124m.config import GPT2_VOCAB_SIZE, get_preset
from gpt124m.device import TF32_ENV
from gpt124m.model import GPT
from gpt124m.train import distributed
from gpt124m.train.config import TrainConfig
from gpt124m.train.trainer import fit

STRICT = 1e-4  # the bar for fp32 CUDA against CPU


@contextlib.contextmanager
def tf32(enabled: bool):
    """The trainer turns TF32 on for CUDA unless GPT124M_TF32=0; set that for a block."""
    old = os.environ.get(TF32_ENV)
    os.environ[TF32_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TF32_ENV, None)
        else:
            os.environ[TF32_ENV] = old


def _tiny_run(out: Path, device: str, *, steps: int, seq: int, batch: int):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    cfg = TrainConfig(
        model="tiny",
        out_dir=str(out),
        seq_len=seq,
        micro_batch_size=batch,
        total_batch_tokens=batch * seq,
        max_steps=steps,
        warmup_steps=2,
        max_lr=3e-3,
        precision="fp32",
        device=device,
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
    )
    fit(cfg, model, RandomBatches(batch, seq, GPT2_VOCAB_SIZE, n=3), info=distributed.init(device))
    losses = [r["loss"] for r in train_records(out)]
    return losses, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def correct_tiny(ctx: Context, results: Results) -> None:
    """`tiny`, fp32: the same steps on CUDA and on CPU give the same losses and weights."""
    shape = dict(steps=3, seq=16, batch=2) if ctx.smoke else dict(steps=10, seq=64, batch=8)
    results["shape"] = shape
    cpu_losses, cpu_weights = _tiny_run(ctx.work / "tiny-cpu", "cpu", **shape)
    rows = {}
    modes = (("strict fp32", False), ("TF32 matmuls (trainer default)", True))
    for label, enabled in modes if ctx.device.type == "cuda" else modes[:1]:
        with tf32(enabled):
            name = "tiny-" + label.split()[0].lower()
            losses, weights = _tiny_run(ctx.work / name, ctx.device.type, **shape)
        loss_diff = max(abs(a - b) for a, b in zip(losses, cpu_losses, strict=True))
        weight_diff = max((weights[k] - cpu_weights[k]).abs().max().item() for k in weights)
        rows[label] = loss_diff
        add_row(
            results,
            f"{shape['steps']} fp32 steps, {ctx.device.type} against cpu",
            {
                "matmuls": label,
                "max |loss diff|": loss_diff,
                "max |weight diff|": weight_diff,
                "first loss": losses[0],
                "last loss": losses[-1],
            },
        )
    strict = rows["strict fp32"]
    figures = ", ".join(f"{label} {diff:.2e}" for label, diff in rows.items())
    results.headline(f"fp32 max |loss diff|, {ctx.device.type} vs cpu", figures)
    if not strict <= STRICT:
        raise AssertionError(f"CUDA fp32 losses differ from CPU by {strict:.2e} > {STRICT:g}")


def builtin_data(ctx: Context) -> Path:
    """The corpus bundled with gpt124m, prepared once per run (seconds)."""
    data = ctx.work / "builtin"
    if not (data / "manifest.json").exists():
        argv = ["prepare", "--source", "builtin", "--out", str(data), "--val-tokens", "65536"]
        argv += ["--shard-tokens", "1000000"]
        if cli(argv) != 0:
            raise RuntimeError("gpt124m prepare --source builtin failed")
    return data


def _train_argv(ctx: Context, data: Path, out: Path, **flags) -> list[str]:
    argv = ["train", "--data-dir", str(data), "--out-dir", str(out), "--device", ctx.device.type]
    argv += ["--eval-every", "0", "--sample-every", "0", "--log-every", "1"]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run_dir)}


def correct_text(ctx: Context, results: Results) -> None:
    """`gpt2` in bf16 on text with --micro-batch-size auto: the loss falls; a run resumed from the
    middle checkpoint continues the same curve."""
    data = builtin_data(ctx)
    model, seq, steps = ("tiny", 32, 6) if ctx.smoke else ("gpt2", 1024, 50)
    half = steps // 2
    flags = dict(
        model=model,
        seq_len=seq,
        micro_batch_size="auto",
        total_batch_tokens=16 * seq,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        max_lr=1e-2 if ctx.smoke else 1e-3,
        precision="bf16",
        checkpoint_every=half,
    )
    straight = ctx.work / "text-straight"
    if cli(_train_argv(ctx, data, straight, **flags)) != 0:
        raise RuntimeError("gpt124m train failed")
    losses = _losses(straight)
    ckpt = straight / "checkpoints" / f"step_{half:07d}"
    config = json.loads((ckpt / "config.json").read_text())
    micro = config["training"]["micro_batch_size"]
    first, last = losses[1], losses[steps]
    results["losses"] = losses
    results.headline(
        f"{model} bf16 loss, step 1 -> {steps}",
        f"{first:.3f} -> {last:.3f} (auto micro-batch {micro})",
    )
    # Resume from the middle checkpoint into a fresh run directory.
    resumed = ctx.work / "text-resumed"
    shutil.copytree(ckpt, resumed / "checkpoints" / ckpt.name)
    argv = _train_argv(ctx, data, resumed, **flags) + [
        "--resume",
        str(resumed / "checkpoints" / ckpt.name),
    ]
    if cli(argv) != 0:
        raise RuntimeError("gpt124m train --resume failed")
    again = _losses(resumed)
    diffs = [abs(again[s] - losses[s]) for s in range(half + 1, steps + 1)]
    # The first resumed step is a forward of the saved weights (it should agree to bf16's
    # rounding); later ones also carry the backward's run-to-run differences (atomics in
    # attention's backward on CUDA), which training compounds.
    results["resume"] = {"steps": sorted(again), "max_abs_diff": max(diffs)}
    results["resume_first_step_diff"] = diffs[0]
    results.headline(
        f"resume at step {half}: |loss diff| at step {half + 1}, max over {half + 1}-{steps}",
        f"{diffs[0]:.2e}, {max(diffs):.2e}",
    )
    if not last < first - (0.1 if ctx.smoke else 1.0):
        raise AssertionError(f"the loss did not fall: {first:.3f} -> {last:.3f}")
    if not max(diffs) < 0.05 or sorted(again) != list(range(half + 1, steps + 1)):
        raise AssertionError(f"the resumed run left the curve: max |diff| {max(diffs):.3f}")


def torchrun(ctx: Context, results: Results) -> None:
    """`torchrun --nproc_per_node 1` runs the trainer under DDP and FSDP2 (NCCL on CUDA, gloo
    on CPU); its fp32 losses match one plain process."""
    data = builtin_data(ctx)
    model, seq, micro = ("tiny", 32, 2) if ctx.smoke else ("gpt2", 256, 4)
    steps = 2 if ctx.smoke else 5
    flags = dict(
        model=model,
        seq_len=seq,
        micro_batch_size=micro,
        total_batch_tokens=2 * micro * seq,  # two micro-steps: no_sync / accumulation paths
        max_steps=steps,
        warmup_steps=1,
        precision="fp32",
        checkpoint_every=0,  # one checkpoint at the end: FSDP gathers the full state
    )
    with tf32(False):
        if cli(_train_argv(ctx, data, ctx.work / "plain", **flags)) != 0:
            raise RuntimeError("plain gpt124m train failed")
    reference = _losses(ctx.work / "plain")
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
    ]
    problems = []
    runs = ("ddp", "fsdp")
    for i, parallel in enumerate(runs):
        out = ctx.work / f"torchrun-{parallel}"
        argv = (
            launcher + ["-m", "gpt124m"] + _train_argv(ctx, data, out, parallel=parallel, **flags)
        )
        # A hung run (NCCL) leaves time for the next one and for being stopped (15 s grace),
        # but gets at least 30 s (a cold start: torch, CUDA, NCCL, then a gpt2 checkpoint and
        # export, takes some 20) where the section has them: never more than it has, so that
        # the run is stopped, and its row written, before the section's own alarm.
        left = ctx.seconds_left() - 15
        timeout = max(min(max(left / (len(runs) - i), 30), left), 1)
        code, output = run_command(
            argv,
            timeout=min(timeout, 240),
            log=ctx.out / f"torchrun-{parallel}.log",
            env={TF32_ENV: "0", "OMP_NUM_THREADS": "4"},
        )
        losses = _losses(out)
        wrapped = f"({parallel}, {backend})" in output
        diff = max((abs(losses[s] - reference[s]) for s in reference if s in losses), default=None)
        add_row(
            results,
            f"torchrun --nproc_per_node 1, {model}, {steps} fp32 steps",
            {
                "parallel": parallel,
                "exit": code,
                "process group": backend if wrapped else "NOT STARTED",
                "steps": len(losses),
                "max |loss diff| vs one process": diff,
                "model dir": (out / "model" / "model.safetensors").exists(),
            },
        )
        if code != 0 or not wrapped or len(losses) != steps or diff is None or diff > STRICT:
            problems.append(f"{parallel}: exit {code}, wrapped {wrapped}, diff {diff}")
            results[f"{parallel}_output_tail"] = output[-3000:]
    results.headline("torchrun DDP / FSDP2", "ok" if not problems else "; ".join(problems))
    if problems:
        raise AssertionError("; ".join(problems))
