"""The training loop, shared by pretraining and SFT.

`fit()` takes a model, a resumable batch source and a config, and owns everything else: precision,
gradient accumulation, DDP/FSDP wrapping, the LR schedule, clipping, periodic evaluation, samples,
checkpoints, exact resume, logging and the run summary. `pretrain()` is `fit()` on token shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gpt124m.checkpoint import WEIGHTS_NAME, build_model, save_pretrained
from gpt124m.device import to_device, use_tf32
from gpt124m.eval._runtime import all_reduce_sum
from gpt124m.model import GPT, IGNORE_INDEX
from gpt124m.train import autobatch, checkpointing, distributed
from gpt124m.train.config import TrainConfig, apply_step_cap
from gpt124m.train.loggers import build_trackers
from gpt124m.train.metrics import (
    MetricsLog,
    StepClock,
    device_power_watts,
    format_duration,
    peak_flops,
    plot_curves,
    run_summary,
)
from gpt124m.train.optim import build_optimizer, load_optimizer_state, set_lr
from gpt124m.train.schedule import lr_at

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
STATS_EVERY = 50  # read step statistics back at least this often when nothing is logged


class BatchSource(Protocol):
    """What the loop needs from training data: batches, and a position it can save and restore."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingDiverged(RuntimeError):
    pass


@dataclasses.dataclass
class Hooks:
    """Optional periodic work; each returns something to log, or None.

    A `hellaswag` hook may also have `prepare(rank=...)`, called once before training starts.
    """

    val_batches: Callable[[], Batches] | None = None
    samples: Callable[[nn.Module], list[str]] | None = None
    hellaswag: Callable[..., dict | None] | None = None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype; 'auto' picks bf16 where the hardware runs it natively."""
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and later
        return torch.bfloat16 if native else torch.float32
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        native = capability in ("AVX512", "AMX") and _cpu_has_bf16()
        return torch.bfloat16 if native else torch.float32
    return torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Run:
    """State of one `fit()` call; methods are the loop's phases."""

    def __init__(self, cfg, model, data, hooks, info, metadata):
        self.cfg, self.data, self.hooks, self.info = cfg, data, hooks, info
        self.metadata = metadata
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.device = info.device
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.accum = cfg.grad_accum_steps(info.world_size)
        self.raw = model.to(self.device)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=info.is_main)
        self.step = 0
        self.tokens_seen = 0
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        self.last_val: float | None = None
        self.last_hellaswag: dict | None = None

    # -- setup ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg, info = self.cfg, self.info
        prepare_hellaswag = getattr(self.hooks.hellaswag, "prepare", None)
        if cfg.hellaswag_every and prepare_hellaswag is not None:
            # Download and check the items now: bad data should stop the run before step 1,
            # not at the first evaluation hours later.
            prepare_hellaswag(rank=info.rank)
        resume_from = self._resume_path()
        state = checkpointing.load(resume_from, info) if resume_from else None
        if info.is_main:
            self._clear_the_way(state)
        distributed.barrier()
        if state is not None:
            checkpointing.load_weights(self.raw, state.path)
        use_tf32(self.device)
        self.model = distributed.wrap(self.raw, info, cfg.parallel)
        self.step_model = self._compiled(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(self.raw, cfg, device_type=self.device.type)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if state is not None:
            self._load_optimizer(state.optimizer_state)
            if state.scaler_state:
                self.scaler.load_state_dict(state.scaler_state)
            self.data.load_state_dict(state.rank_state["loader"])
            checkpointing.set_rng_state(state.rank_state["rng"])
            self.step, self.tokens_seen = state.step, state.tokens_seen
            self.metrics.truncate_after(self.step)
            log.info(
                "resumed from %s at step %d (%s tokens)",
                resume_from,
                self.step,
                f"{self.tokens_seen:,}",
            )
        self.flops_per_token = self._flops_per_token()
        self.peak = peak_flops(self.device, self.amp_dtype, cfg.peak_flops)

    def _clear_the_way(self, state: checkpointing.TrainingState | None) -> None:
        """Main rank: move what a previous timeline left behind out of this run's way."""
        step = state.step if state is not None else 0
        moved = checkpointing.set_aside_newer(self.ckpt_root, step)
        if moved:
            log.warning(
                "resuming at step %d: set aside %d newer checkpoint(s) as %s (kept, not deleted)",
                step,
                len(moved),
                ", ".join(p.name for p in moved),
            )
        if state is None:
            self.metrics.start_afresh()

    def _compiled(self, model: nn.Module) -> nn.Module:
        """Only the training step is compiled: eval and sampling see other shapes and modes."""
        if self.device.type == "cpu" and not any(
            shutil.which(cxx) for cxx in ("c++", "g++", "clang++")
        ):
            raise RuntimeError(
                "--compile on CPU needs a C++ compiler (Inductor builds its kernels with one): "
                "install g++ (e.g. apt-get install g++) or drop --compile"
            )
        return torch.compile(model)

    def _fsdp(self) -> bool:
        return self.info.enabled and self.cfg.parallel == "fsdp"

    def _load_optimizer(self, optimizer_state: dict[str, Any]) -> None:
        if not self._fsdp():
            load_optimizer_state(self.optimizer, optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            optimizer_state,
            options=StateDictOptions(full_state_dict=True),
        )

    def _resume_path(self) -> Path | None:
        cfg = self.cfg
        existing = checkpointing.list_checkpoints(self.ckpt_root)
        if cfg.resume == "none":
            if existing:
                raise ValueError(
                    f"{self.ckpt_root} already holds checkpoints; pass --resume auto to continue "
                    "that run, or choose another --out-dir"
                )
            return None
        if cfg.resume == "auto":
            found, error = None, None
            if self.info.is_main:
                found = checkpointing.find_resumable(self.ckpt_root)
                if found is None and existing:
                    error = (
                        f"--resume auto: none of the {len(existing)} checkpoints in "
                        f"{self.ckpt_root} verifies (see the warnings above); move them away to "
                        "start afresh, or resume from one explicitly"
                    )
            found, error = distributed.broadcast_object((str(found) if found else None, error))
            if error:
                raise ValueError(error)
            if found is None:
                log.info("no checkpoint in %s: starting fresh", self.ckpt_root)
            return Path(found) if found else None
        return checkpointing.check_resume(cfg.resume)

    def _flops_per_token(self) -> float:
        config = getattr(self.raw, "config", None)
        return config.flops_per_token(self.cfg.seq_len) if config is not None else float("nan")

    # -- one optimizer step --------------------------------------------------------------------
    def train_step(self) -> None:
        cfg = self.cfg
        lr = lr_at(
            self.step,
            max_lr=cfg.max_lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            schedule=cfg.schedule,
            decay_fraction=cfg.decay_fraction,
        )
        set_lr(self.optimizer, lr)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        batches = [self.data.next_batch() for _ in range(self.accum)]
        batches = [(to_device(x, self.device), to_device(y, self.device)) for x, y in batches]
        weights = self._micro_batch_weights([y for _, y in batches])
        for micro, (x, y) in enumerate(batches):
            sync = micro == self.accum - 1
            with self._no_sync(sync), autocast_context(self.device, self.amp_dtype):
                _, loss = self.step_model(x, y)
                loss = loss * weights[micro]
            loss_sum += loss.detach()
            self.scaler.scale(loss).backward()
        loss = distributed.mean_across_ranks(loss_sum)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.tokens_seen += cfg.total_batch_tokens
        # Device tensors: reading them waits for the GPU, so that happens only in _settle().
        self.pending.append((self.step, lr, loss.detach(), grad_norm.detach()))

    def _settle(self) -> dict[str, float]:
        """Wait for the device, read the steps run since the last call and check them; returns
        the last step's loss, lr and gradient norm. The only per-step host sync, so it runs only
        when a step is logged, before periodic work, and every STATS_EVERY steps.

        A non-finite step stops the run before anything is evaluated or saved, so the newest
        checkpoint on disk is still a good one."""
        steps = self.pending
        self.pending = []
        values = torch.stack([torch.stack([v, n.float()]) for _, _, v, n in steps]).tolist()
        for (step, _, _, _), (loss, norm) in zip(steps, values, strict=True):
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss ({loss}) at step {step}; stopping. "
                    f"The last good checkpoint in {self.ckpt_root} is intact: lower --max-lr or "
                    "check the data, then --resume auto"
                )
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(f"non-finite gradient norm at step {step}; stopping")
        return {"loss": values[-1][0], "lr": steps[-1][1], "grad_norm": values[-1][1]}

    def _micro_batch_weights(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """Weights that turn per-micro-batch mean losses into the mean over every target token of
        the step, on all ranks. Without them a micro-batch with few unmasked targets (a short SFT
        answer) would count as much as a full one. Equal to 1/accum when nothing is masked."""
        counts = torch.stack([(y != IGNORE_INDEX).sum() for y in targets]).float()
        total = all_reduce_sum(counts.sum()).clamp(min=1)
        # DDP and FSDP average gradients over ranks, hence the world size.
        return counts * self.info.world_size / total

    def _no_sync(self, sync: bool):
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    # -- periodic work -------------------------------------------------------------------------
    def _due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self.step == self.cfg.max_steps)

    def evaluate(self) -> None:
        if self.hooks.val_batches is not None:
            from gpt124m.eval.loss import evaluate_loss

            result = evaluate_loss(
                self.model, self.hooks.val_batches(), device=self.device, autocast_dtype=self._amp()
            )
            self.last_val = result["loss"]
            self._record("val", loss=result["loss"])
            log.info("step %d | val loss %.4f", self.step, result["loss"])
        self._plot()

    def run_hellaswag(self) -> None:
        if self.hooks.hellaswag is None:
            return
        result = self.hooks.hellaswag(
            self.model,
            device=self.device,
            autocast_dtype=self._amp(),
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        if result:
            self.last_hellaswag = result
            self._record("hellaswag", acc_norm=result["acc_norm"], acc=result["acc"], n=result["n"])
            log.info(
                "step %d | HellaSwag acc_norm %.4f (n=%d)",
                self.step,
                result["acc_norm"],
                result["n"],
            )
            self._plot()

    def sample(self) -> None:
        if self.hooks.samples is None:
            return
        texts = self.hooks.samples(self.raw)
        if self.info.is_main:
            for text in texts:
                log.info("sample | %s", text.replace("\n", "\\n"))
            self._record("samples", texts=texts)

    def checkpoint(self) -> None:
        if self._fsdp():
            model, opt_state = self._gather_fsdp()
        else:
            model, opt_state = self.raw, self.optimizer.state_dict()
        path = checkpointing.save(
            self.ckpt_root,
            step=self.step,
            tokens_seen=self.tokens_seen,
            model=model,
            optimizer_state=opt_state,
            scaler_state=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            loader_state=self.data.state_dict(),
            metadata=self._metadata(),
            info=self.info,
            keep=self.cfg.keep_checkpoints,
        )
        if self.info.is_main:
            log.info("step %d | checkpoint %s", self.step, path)

    def _gather_fsdp(self):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=options)
        opt_state = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        model = (
            build_model(self.raw.config, full, Path(WEIGHTS_NAME)) if self.info.is_main else None
        )
        return model, opt_state

    def _amp(self) -> torch.dtype | None:
        return None if self.amp_dtype == torch.float32 else self.amp_dtype

    def _record(self, kind: str, **values) -> None:
        self.metrics.write({"kind": kind, "step": self.step, "tokens": self.tokens_seen, **values})

    def _plot(self) -> None:
        if self.info.is_main:
            plot_curves(self.metrics.read(), self.out / "curves.png", title=self.out.name)

    def _metadata(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if self.last_val is not None:
            results["val_loss"] = self.last_val
        if self.last_hellaswag:
            results["hellaswag"] = self.last_hellaswag
        return {
            **self.metadata,
            "training": self.cfg.to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "results": results,
        }

    # -- the loop ------------------------------------------------------------------------------
    def loop(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
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
                type(self.raw).__name__,
                info.world_size,
                self.device,
                f" ({cfg.parallel}, {distributed.backend()})" if info.enabled else "",
                str(self.amp_dtype).removeprefix("torch."),
                self.accum,
                cfg.micro_batch_size,
                cfg.seq_len,
                info.world_size,
                f"{cfg.total_batch_tokens:,}",
            )
        if self.step == 0 and cfg.eval_every > 0:
            self.evaluate()
        start = time.perf_counter()
        first_step = self.step
        clock = StepClock(self.device)
        while self.step < cfg.max_steps:
            self.train_step()
            clock.count_step()
            last = self.step == cfg.max_steps
            logging_due = cfg.log_every and (self.step % cfg.log_every == 0 or last)
            work = [
                (self._due(cfg.eval_every), self.evaluate),
                (self._due(cfg.hellaswag_every), self.run_hellaswag),
                (self._due(cfg.sample_every), self.sample),
                (self._due(cfg.checkpoint_every) or last, self.checkpoint),
            ]
            work = [job for due, job in work if due]
            if logging_due or work or len(self.pending) >= STATS_EVERY:
                stats = self._settle()
                clock.pause()
                if logging_due:
                    self._log_step(stats, clock.take_step_time(), start, first_step)
                for job in work:
                    job()
                clock.resume()
        return self.finish(time.perf_counter() - start)

    def _log_step(self, stats, dt, start, first_step) -> None:
        tokens_per_s = self.cfg.total_batch_tokens / dt
        mfu = tokens_per_s * self.flops_per_token / (self.peak * self.info.world_size)
        done = self.step - first_step
        eta = (time.perf_counter() - start) / done * (self.cfg.max_steps - self.step)
        self._record("train", **stats, ms=dt * 1000, tokens_per_s=tokens_per_s, mfu=mfu)
        if self.info.is_main:
            print(
                f"step {self.step:>6}/{self.cfg.max_steps} | loss {stats['loss']:.4f} | "
                f"lr {stats['lr']:.2e} | norm {stats['grad_norm']:.3f} | {dt * 1000:.0f} ms | "
                f"{tokens_per_s:,.0f} tok/s | MFU {mfu * 100:.1f}% | ETA {format_duration(eta)}",
                flush=True,
            )

    def finish(self, wall: float) -> dict[str, Any]:
        summary = run_summary(
            tokens_seen=self.tokens_seen,
            steps=self.step,
            wall_time_s=wall,
            device=self.device,
            world_size=self.info.world_size,
            power_watts=device_power_watts(self.device, self.cfg.power_watts),
            grid_gco2_per_kwh=self.cfg.grid_gco2_per_kwh,
        )
        summary["final_val_loss"] = self.last_val
        if self.last_hellaswag:
            summary["hellaswag"] = self.last_hellaswag
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
    run.prepare()
    try:
        return run.loop()
    finally:
        run.metrics.close()


def sample_texts(model: GPT, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """Greedy-free samples for the log: fixed prompts, fixed seed, so runs are comparable."""
    from gpt124m.generate import GenerationConfig, generate_text
    from gpt124m.tokenizer import get_tokenizer

    budget = min(max_new_tokens, model.config.block_size // 2)
    cfg = GenerationConfig(max_new_tokens=budget, do_sample=True, top_k=50, seed=seed)
    tok = get_tokenizer()
    return [p + t for p, t in zip(prompts, generate_text(model, tok, prompts, cfg), strict=True)]


def pretrain(cfg: TrainConfig) -> dict[str, Any]:
    """Pretrain on prepared token shards; writes checkpoints and a final model directory."""
    from gpt124m.data.loader import TokenLoader, validation_batches, validation_budget

    cfg.validate()
    checkpointing.check_resume(cfg.resume)  # before any work, not after the model and data
    info = distributed.init(cfg.device)
    try:
        model = _initial_model(cfg)
        if cfg.seq_len > model.config.block_size:
            raise ValueError(
                f"--seq-len {cfg.seq_len} exceeds the model's block size {model.config.block_size}"
            )
        amp = resolve_precision(cfg.precision, info.device)
        cfg = autobatch.resolve(cfg, model, info, None if amp == torch.float32 else amp)
        loader = TokenLoader(
            cfg.data_dir,
            batch_size=cfg.micro_batch_size,
            seq_len=cfg.seq_len,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
        )
        val_tokens = cfg.val_tokens
        if cfg.eval_every > 0:
            val_tokens = validation_budget(cfg.data_dir, cfg.val_tokens, say=info.is_main)
        hooks = Hooks(
            val_batches=lambda: validation_batches(
                cfg.data_dir,
                batch_size=cfg.micro_batch_size,
                seq_len=cfg.seq_len,
                max_tokens=val_tokens,
                rank=info.rank,
                world_size=info.world_size,
            ),
            samples=lambda m: sample_texts(
                m, cfg.sample_prompts, cfg.sample_max_new_tokens, cfg.seed
            ),
            hellaswag=hellaswag_hook(cfg),
        )
        summary = fit(
            cfg, model, loader, hooks=hooks, info=info, metadata={"data_dir": cfg.data_dir}
        )
        if info.is_main:
            summary["model_dir"] = str(_write_final_model(cfg, summary))
        return summary
    finally:
        distributed.shutdown()


def _initial_model(cfg: TrainConfig) -> GPT:
    from gpt124m.config import PRESETS

    torch.manual_seed(cfg.seed)
    if cfg.model in PRESETS:
        config = dataclasses.replace(PRESETS[cfg.model].config, dropout=cfg.dropout)
        return GPT(config)
    from gpt124m.checkpoint import load_for_training

    return load_for_training(cfg.model)


def hellaswag_hook(cfg: TrainConfig):
    """The periodic HellaSwag evaluation `--hellaswag-every` asks for, or None."""
    if not cfg.hellaswag_every:
        return None
    try:
        from gpt124m.eval.hellaswag import HellaSwagHook
    except ImportError:
        log.warning("HellaSwag evaluation is not available in this install; skipping it")
        return None
    return HellaSwagHook(cfg.hellaswag_data, limit=cfg.hellaswag_limit)


def _write_final_model(cfg: TrainConfig, summary: dict[str, Any]) -> Path:
    """The newest checkpoint's weights as a clean model dir, with the run's plots and summary."""
    out = Path(cfg.out_dir)
    latest = checkpointing.list_checkpoints(out / "checkpoints")
    if not latest:
        raise ValueError("no checkpoint was written (set --checkpoint-every > 0)")
    from gpt124m.checkpoint import load_model, read_config

    source = latest[-1]
    metadata = {
        k: v
        for k, v in read_config(source).items()
        if k not in ("format", "format_version", "model", "tokenizer")
    }
    model_dir = out / "model"
    save_pretrained(load_model(source), model_dir, metadata=metadata)
    for name in ("summary.json", "curves.png"):
        if (out / name).exists():
            shutil.copy2(out / name, model_dir / name)
    return model_dir
