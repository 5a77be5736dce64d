"""The run's checkpoints as one component: which checkpoint to resume from (the resume policy),
moving a previous timeline's newer checkpoints aside, restoring every piece of state, saving (with
the FSDP2 gather), and the final model directory that pretraining and SFT both leave behind.

The on-disk format, verification and RNG capture live in `train/checkpointing.py`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from gpt124m import collectives
from gpt124m.train import checkpointing
from gpt124m.train.optim import load_optimizer_state
from gpt124m.train.step import Stepper

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, cfg, info, out: Path):
        self.cfg, self.info = cfg, info
        self.root = out / "checkpoints"

    @property
    def fsdp(self) -> bool:
        return self.info.enabled and self.cfg.parallel == "fsdp"

    def resume_path(self) -> Path | None:
        """What `--resume` points at: nothing, the newest good checkpoint (auto), or a path."""
        cfg = self.cfg
        existing = checkpointing.list_checkpoints(self.root)
        if cfg.resume == "none":
            if existing:
                raise ValueError(
                    f"{self.root} already holds checkpoints; pass --resume auto to continue "
                    "that run, or choose another --out-dir"
                )
            return None
        if cfg.resume == "auto":
            found, error = None, None
            if self.info.is_main:
                found = checkpointing.find_resumable(self.root)
                if found is None and existing:
                    error = (
                        f"--resume auto: none of the {len(existing)} checkpoints in "
                        f"{self.root} verifies (see the warnings above); move them away to "
                        "start afresh, or resume from one explicitly"
                    )
            found, error = collectives.broadcast_object((str(found) if found else None, error))
            if error:
                raise ValueError(error)
            if found is None:
                log.info("no checkpoint in %s: starting fresh", self.root)
            return Path(found) if found else None
        return checkpointing.check_resume(cfg.resume)

    def load(self, path: Path | None) -> checkpointing.TrainingState | None:
        return checkpointing.load(path, self.info) if path else None

    def clear_the_way(self, state: checkpointing.TrainingState | None, metrics) -> None:
        """Main rank: move what a previous timeline left behind out of this run's way."""
        step = state.step if state is not None else 0
        moved = checkpointing.set_aside_newer(self.root, step)
        if moved:
            log.warning(
                "resuming at step %d: set aside %d newer checkpoint(s) as %s (kept, not deleted)",
                step,
                len(moved),
                ", ".join(p.name for p in moved),
            )
        if state is None:
            metrics.start_afresh()

    def restore(self, state: checkpointing.TrainingState, stepper: Stepper) -> None:
        """Optimizer, scaler, data position, RNG and counters: the rest of an exact resume
        (the weights were loaded before the model was wrapped)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            def load(full):
                set_optimizer_state_dict(
                    stepper.module,
                    stepper.optimizer,
                    full,
                    options=StateDictOptions(full_state_dict=True),
                )

            load_optimizer_state(stepper.optimizer, state.optimizer_state, load)
        else:
            load_optimizer_state(stepper.optimizer, state.optimizer_state)
        if state.scaler_state:
            stepper.scaler.load_state_dict(state.scaler_state)
        stepper.data.load_state_dict(state.rank_state["loader"])
        checkpointing.set_rng_state(state.rank_state["rng"])
        stepper.step, stepper.tokens_seen = state.step, state.tokens_seen
        stepper.earlier_seconds = state.train_seconds

    def save(self, stepper: Stepper, metadata: dict[str, Any], train_seconds: float) -> Path:
        if self.fsdp:
            model, opt_state = self._gather_fsdp(stepper)
        else:
            model, opt_state = stepper.module, stepper.optimizer.state_dict()
        scaler = stepper.scaler
        return checkpointing.save(
            self.root,
            step=stepper.step,
            tokens_seen=stepper.tokens_seen,
            train_seconds=train_seconds,
            model=model,
            optimizer_state=opt_state,
            scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
            loader_state=stepper.data.state_dict(),
            metadata=metadata,
            info=self.info,
            keep=self.cfg.keep_checkpoints,
        )

    def _gather_fsdp(self, stepper: Stepper) -> tuple[nn.Module | None, dict[str, Any]]:
        """Full weights (on the main rank, as a plain model) and optimizer state from shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        from gpt124m.checkpoint import WEIGHTS_NAME, build_model

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(stepper.module, options=options)
        opt_state = get_optimizer_state_dict(stepper.module, stepper.optimizer, options=options)
        if not self.info.is_main:
            return None, opt_state
        return build_model(stepper.module.config, full, Path(WEIGHTS_NAME)), opt_state


def run_metadata(checkpoint: Path) -> dict[str, Any]:
    """What a checkpoint records about its run (training config, results, SFT facts)."""
    from gpt124m.checkpoint import FORMAT_KEYS, read_config

    return {k: v for k, v in read_config(checkpoint).items() if k not in FORMAT_KEYS}


def latest_checkpoint(out_dir: str | Path) -> Path:
    found = checkpointing.list_checkpoints(Path(out_dir) / "checkpoints")
    if not found:
        raise ValueError("no checkpoint was written (set --checkpoint-every > 0)")
    return found[-1]


def check_source_survives(out_dir: str | Path, source: str, flag: str) -> None:
    """A run writes OUT_DIR/model at its end: never over the model it starts from."""
    target = (Path(out_dir).expanduser() / "model").resolve()
    start = Path(source).expanduser().resolve()
    if start.exists() and target in (start, *start.parents):
        raise ValueError(
            f"{flag} {source}: this run writes its model to {target}, over the one it starts "
            "from; give another --out-dir"
        )


def write_final_model(out_dir: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """`out_dir/model`: a clean model directory of `model` with the run's metadata, summary and
    curves beside it; what pretraining and SFT both leave for generate, eval and export."""
    from gpt124m.checkpoint import save_pretrained

    out = Path(out_dir)
    model_dir = out / "model"
    save_pretrained(model, model_dir, metadata=metadata)
    for name in ("summary.json", "curves.png"):
        if (out / name).exists():
            shutil.copy2(out / name, model_dir / name)
    return model_dir
