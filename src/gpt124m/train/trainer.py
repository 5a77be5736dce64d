"""The training loop, shared by pretraining and SFT.

`fit()` takes a model, a resumable batch source and a config, and puts the run's components
together: precision, DDP/FSDP wrapping and compilation, the optimizer, the `Stepper` (one step),
the `Checkpointer` (resume and save), the periodic evaluators, and the metrics log; then it steps
until `max_steps`, doing periodic work when it is due, and returns the run summary.
`train/pretrain.py` and `sft/runner.py` are the recipes that call it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt124m import collectives
from gpt124m.device import available_host_memory, require_compiler, resolve_precision, use_tf32
from gpt124m.train import checkpointing, continuity, distributed
from gpt124m.train.checkpointer import Checkpointer, run_metadata
from gpt124m.train.claim import Claim, busy
from gpt124m.train.config import TrainConfig, apply_step_cap
from gpt124m.train.costs import (
    StepClock,
    device_power_watts,
    peak_flops,
    run_summary,
    training_flops_per_token,
)
from gpt124m.train.evaluators import Context, Hooks, Periodic, build_evaluators, due
from gpt124m.train.loggers import build_trackers
from gpt124m.train.metrics import MetricsLog, format_duration, plot_curves
from gpt124m.train.optim import build_optimizer
from gpt124m.train.step import BatchSource, Stepper, TrainingDiverged

__all__ = ["BatchSource", "Hooks", "TrainingDiverged", "fit"]

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003
STATS_EVERY = 50  # read step statistics back at least this often when nothing is logged


class _Run:
    """One `fit()` call: the components, put together; methods are the loop's phases."""

    def __init__(self, cfg, model, data, hooks, info, metadata):
        self.cfg, self.info, self.metadata = cfg, info, metadata
        self.out = Path(cfg.out_dir)
        self.device = info.device
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.module = model.to(self.device)
        self.data = data
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=info.is_main)
        self.checkpointer = Checkpointer(cfg, info, self.out)
        self.evaluators = build_evaluators(hooks, cfg)
        self.results: dict[str, Any] = {}  # the latest of each evaluation, for the metadata
        self._start = time.perf_counter()  # of this session's steps; reset when the loop starts
        self.claim: Claim | None = None  # OUT_DIR, this run's alone from prepare() on

    def prepare(self) -> None:
        cfg, info = self.cfg, self.info
        shards = info.world_size if info.enabled and cfg.parallel == "fsdp" else 1
        check_training_fits(self.module, self.device, shards)
        for evaluator in self.evaluators:
            if hasattr(evaluator, "prepare"):
                evaluator.prepare(rank=info.rank)
        resume_from = self.checkpointer.resume_path()
        state = self.checkpointer.load(resume_from)
        recorded = run_metadata(state.path) if state is not None else {}  # read once
        if state is not None:
            training = recorded.get("training") or {}
            changes = continuity.check(cfg.to_dict(), training, state.step, str(state.path))
            if info.is_main:
                continuity.log_changes(changes, str(state.path))
            checkpointing.load_weights(self.module, state.path)
        elif info.world_size > 1:
            # The ranks built the same weights from one seed; from here each draws its own
            # dropout masks, as one process does across its micro-batches (a resume restores
            # each rank's own generator instead).
            torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * (info.rank + 1))
        use_tf32(self.device)
        stepping = distributed.wrap(self.module, info, cfg.parallel)
        if cfg.compile:
            stepping = _compiled(stepping, self.device)
        self.stepper = Stepper(
            cfg,
            self.module,
            stepping,
            build_optimizer(self.module, cfg, device_type=self.device.type),
            torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16),
            self.data,
            device=self.device,
            amp_dtype=self.amp_dtype,
            world_size=info.world_size,
        )
        if state is not None:
            self.checkpointer.restore(state, self.stepper)
        # Only now, with every setting accepted (the optimizer's, the compiler's, the
        # checkpoint's), is OUT_DIR claimed, a later timeline set aside or a fresh run's
        # metrics started: a refused flag changes nothing in OUT_DIR.
        claimed = True
        if info.is_main:
            try:
                self.claim = Claim(self.out)
            except ValueError:
                claimed = False
        if not collectives.all_agree(claimed, self.device):  # every rank stops, none waits
            raise busy(self.out)
        if info.is_main:
            self.checkpointer.clear_the_way(state, self.metrics)
        collectives.barrier()
        if state is not None:
            self.results = _recorded_results(recorded)
            self.metrics.truncate_after(self.stepper.step)
            log.info(
                "resumed from %s at step %d (%s tokens)",
                resume_from,
                self.stepper.step,
                f"{self.stepper.tokens_seen:,}",
            )
        config = getattr(self.module, "config", None)
        self.flops_per_token = (
            training_flops_per_token(self.module, config, cfg.seq_len) if config else float("nan")
        )
        self.peak = peak_flops(self.device, self.amp_dtype, cfg.peak_flops)

    # -- periodic work -------------------------------------------------------------------------
    def periodic(self, evaluators: list[Periodic], *, plot: bool) -> None:
        """Run `evaluators` and record what they return; then redraw the curves if `plot` or
        a loss or HellaSwag score came in."""
        ctx = Context(
            self.device,
            None if self.amp_dtype == torch.float32 else self.amp_dtype,
            self.info.rank,
            self.info.world_size,
            self.info.is_main,
            self.stepper.step,
        )
        for evaluator in evaluators:
            result = evaluator(self.module, ctx)
            if result is None:
                continue
            self._record(evaluator.kind, **result)
            if evaluator.kind in ("val", "hellaswag"):
                self.results[evaluator.kind] = result
                plot = True
        if plot and self.info.is_main:
            plot_curves(self.metrics.read(), self.out / "curves.png", title=self.out.name)

    def checkpoint(self) -> None:
        path = self.checkpointer.save(self.stepper, self._metadata(), self._train_seconds())
        if self.info.is_main:
            log.info("step %d | checkpoint %s", self.stepper.step, path)

    def _train_seconds(self) -> float:
        """Wall time of training so far, earlier sessions included: what a resumed run's
        time, energy and CO2 figures must count (steps redone after a crash are not)."""
        return self.stepper.earlier_seconds + time.perf_counter() - self._start

    def _record(self, kind: str, **values) -> None:
        s = self.stepper
        self.metrics.write({"kind": kind, "step": s.step, "tokens": s.tokens_seen, **values})

    def _metadata(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if "val" in self.results:
            results["val_loss"] = self.results["val"]["loss"]
        if "hellaswag" in self.results:
            results["hellaswag"] = self.results["hellaswag"]
        return {
            **self.metadata,
            "training": self.cfg.to_dict(),
            "step": self.stepper.step,
            "tokens_seen": self.stepper.tokens_seen,
            "results": results,
        }

    # -- the loop ------------------------------------------------------------------------------
    def say_how_to_resume(self) -> None:
        stepper = getattr(self, "stepper", None)
        if not self.info.is_main or stepper is None:
            return
        saved = checkpointing.list_checkpoints(self.checkpointer.root)
        if saved:
            log.warning(
                "stopped at step %d; the last checkpoint is %s: the same command with "
                "--resume auto continues from it",
                stepper.step,
                saved[-1],
            )
        else:
            log.warning("stopped at step %d, before this run wrote a checkpoint", stepper.step)

    def loop(self) -> dict[str, Any]:
        cfg, info, stepper = self.cfg, self.info, self.stepper
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.trackers = build_trackers(
                self.out,
                tensorboard=cfg.tensorboard,
                wandb_project=cfg.wandb_project,
                config=cfg.to_dict(),
            )
            log.info(
                "training %s on %d x %s%s | %s | accum %d x micro %d x T %d x world %d = %s "
                "tokens/step",
                type(self.module).__name__,
                info.world_size,
                self.device,
                f" ({cfg.parallel}, {collectives.backend()})" if info.enabled else "",
                str(self.amp_dtype).removeprefix("torch."),
                stepper.accum,
                cfg.micro_batch_size,
                cfg.seq_len,
                info.world_size,
                f"{cfg.total_batch_tokens:,}",
            )
        if stepper.step == 0 and cfg.eval_every > 0:  # the untrained baseline: loss only
            self.periodic([e for e in self.evaluators if e.kind == "val"], plot=True)
        start = self._start = time.perf_counter()
        first_step = stepper.step
        clock = StepClock(self.device)
        while stepper.step < cfg.max_steps:
            stepper.run()
            clock.count_step()
            step, last = stepper.step, stepper.step == cfg.max_steps
            logging_due = due(cfg.log_every, step, cfg.max_steps)
            evaluations = [e for e in self.evaluators if e.due(step, cfg.max_steps)]
            plotting = due(cfg.eval_every, step, cfg.max_steps)
            saving = last or due(cfg.checkpoint_every, step, cfg.max_steps)
            work = logging_due or evaluations or plotting or saving
            if work or len(stepper.pending) >= STATS_EVERY:
                stats = stepper.settle(self.checkpointer.root)
                clock.pause()
                if logging_due:
                    self._log_step(stats, clock.take_step_time(), start, first_step)
                if evaluations or plotting:
                    self.periodic(evaluations, plot=plotting)
                if saving:
                    self.checkpoint()
                clock.resume()
        return self.finish(self._train_seconds())

    def _log_step(self, stats, dt, start, first_step) -> None:
        step, max_steps = self.stepper.step, self.cfg.max_steps
        tokens_per_s = self.cfg.total_batch_tokens / dt
        mfu = tokens_per_s * self.flops_per_token / (self.peak * self.info.world_size)
        eta = (time.perf_counter() - start) / (step - first_step) * (max_steps - step)
        self._record("train", **stats, ms=dt * 1000, tokens_per_s=tokens_per_s, mfu=mfu)
        if self.info.is_main:
            print(
                f"step {step:>6}/{max_steps} | loss {stats['loss']:.4f} | "
                f"lr {stats['lr']:.2e} | norm {stats['grad_norm']:.3f} | {dt * 1000:.0f} ms | "
                f"{tokens_per_s:,.0f} tok/s | MFU {mfu * 100:.1f}% | ETA {format_duration(eta)}",
                flush=True,
            )

    def finish(self, wall: float) -> dict[str, Any]:
        summary = run_summary(
            tokens_seen=self.stepper.tokens_seen,
            steps=self.stepper.step,
            wall_time_s=wall,
            device=self.device,
            world_size=self.info.world_size,
            power_watts=device_power_watts(self.device, self.cfg.power_watts),
            grid_gco2_per_kwh=self.cfg.grid_gco2_per_kwh,
        )
        summary["final_val_loss"] = self.results.get("val", {}).get("loss")
        if "hellaswag" in self.results:
            summary["hellaswag"] = self.results["hellaswag"]
        if self.info.is_main:
            import json

            from gpt124m.atomic import atomic_write_text

            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            log.info(
                "done: %s tokens in %s | %.3f device-hours | ~%.3f kWh, ~%.4f kg CO2e",
                f"{summary['tokens_seen']:,}",
                format_duration(wall),
                summary["device_hours"],
                summary["energy_kwh"],
                summary["co2_kg"],
            )
        return summary


def _recorded_results(metadata: dict[str, Any]) -> dict[str, Any]:
    """The evaluations a checkpoint's metadata records, as `_Run.results` holds them: a resumed
    run keeps them in its summary and next checkpoint until it evaluates again (a run resumed at
    its last step evaluates nothing)."""
    recorded = metadata.get("results") or {}
    results: dict[str, Any] = {}
    if "val_loss" in recorded:
        results["val"] = {"loss": recorded["val_loss"]}
    if "hellaswag" in recorded:
        results["hellaswag"] = recorded["hellaswag"]
    return results


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """Only the training step is compiled: eval and sampling see other shapes and modes."""
    require_compiler(device, "--compile")
    return torch.compile(model)


def check_training_fits(model: nn.Module, device: torch.device, shards: int = 1) -> None:
    """On the host, what training adds to the weights (a gradient and at least one optimizer
    state per trainable value, fp32: AdamW keeps two; FSDP splits them over `shards` ranks)
    must fit the memory left, or the kernel kills the run at its first step with no word
    (gpt2-xl's weights fit a 24 GB machine; its training does not)."""
    if device.type != "cpu":
        return
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need, have = 8 * trainable // shards, available_host_memory()
    if have is not None and need > have:
        adamw = 12 * trainable / shards
        raise ValueError(
            f"training {trainable:,} parameters on the CPU needs at least {need / 2**30:,.1f} GiB "
            f"more for gradients and optimizer state (AdamW: {adamw / 2**30:,.1f} GiB), and "
            f"about {have / 2**30:,.1f} GiB is available; a smaller --model, LoRA, or a GPU"
        )


def fit(
    cfg: TrainConfig,
    model: nn.Module,
    data: BatchSource,
    *,
    hooks: Hooks | None = None,
    info: distributed.Dist | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `model` (forward(x, y) -> (logits, loss)) on `data` as `cfg` says; returns the summary."""
    cfg = apply_step_cap(cfg)
    cfg.validate()
    info = info or distributed.init(cfg.device)
    run = _Run(cfg, model, data, hooks or Hooks(), info, metadata or {})
    try:
        run.prepare()
        return run.loop()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises it for both)
        run.say_how_to_resume()
        raise
    finally:
        run.metrics.close()
        if run.claim is not None:
            run.claim.release()
