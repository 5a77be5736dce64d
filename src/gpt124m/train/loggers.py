"""Optional experiment trackers (TensorBoard, Weights & Biases) fed from the metrics log.

metrics.jsonl stays the source of truth; a tracker receives the numeric fields of each record as
`{kind}/{field}` scalars at the record's step. Both are optional extras: `pip install -e ".[logging]"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from gpt124m.errors import first_line

SKIPPED = ("kind", "step", "tokens")
LOCAL_MODES = ("offline", "dryrun", "disabled")  # WANDB_MODE values that need no login
NO_LOGIN = (
    "--wandb-project {project}: no W&B login; run `wandb login` (or set WANDB_API_KEY), or set "
    "WANDB_MODE=offline to log locally and `wandb sync` later"
)


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    kind = record.get("kind", "metrics")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in SKIPPED and isinstance(value, int | float) and not isinstance(value, bool)
    }


def _missing(package: str, flag: str) -> ValueError:
    return ValueError(
        f'{flag} needs the `{package}` package: pip install "gpt124m[logging]" (or {package})'
    )


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        self.writer = self.check()(log_dir=str(log_dir))

    @staticmethod
    def check():
        """SummaryWriter, or the error that says how to install it."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "--tensorboard") from None
        return SummaryWriter

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("step", 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise _missing("wandb", "--wandb-project") from None
    return wandb


def check_wandb(project: str) -> None:
    """Refuse --wandb-project before the run builds a model or writes anything, unless W&B can
    start: logged in, or in a mode that needs no login. Left to `wandb.init`, a missing login
    is a page of traceback once OUT_DIR exists, or, in a terminal, an interactive prompt; so
    the login is looked up here with the prompt off."""
    wandb = _import_wandb()
    if _wandb_mode() in LOCAL_MODES:
        return
    if not wandb.login(prompt=False, verify=False):
        raise ValueError(NO_LOGIN.format(project=project))


def _wandb_mode() -> str:
    """The mode `wandb.init` would take: WANDB_MODE, or what `wandb offline` stored."""
    try:
        from wandb.sdk import wandb_setup

        return str(wandb_setup.singleton().settings.mode)
    except (ImportError, AttributeError):  # a wandb laid out otherwise: the variable alone
        return os.environ.get("WANDB_MODE", "online")


def check_trackers(*, tensorboard: bool, wandb_project: str | None) -> None:
    """What `build_trackers` would refuse, checked up front. Only the main rank logs to a
    tracker, so only it asks W&B (torchrun stops the other ranks when it fails)."""
    if tensorboard:
        TensorBoardTracker.check()
    if wandb_project and os.environ.get("RANK", "0") == "0":
        check_wandb(wandb_project)


class WandbTracker:
    """Honours WANDB_MODE (e.g. `offline` on machines without network)."""

    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]):
        wandb = _import_wandb()
        check_wandb(project)  # never the prompt, should a login have gone since the start
        try:
            self.run = wandb.init(
                project=project, dir=str(run_dir), config=config, name=run_dir.name
            )
        except wandb.errors.Error as e:  # refused key, no network: wandb's own types, one line
            raise ValueError(
                f"--wandb-project {project}: W&B did not start: {type(e).__name__}: "
                f"{first_line(e)} (WANDB_MODE=offline logs locally)"
            ) from None

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log({**values, "tokens": record.get("tokens", 0)}, step=record.get("step", 0))

    def close(self) -> None:
        self.run.finish()


def build_trackers(
    out_dir: Path, *, tensorboard: bool, wandb_project: str | None, config: dict[str, Any]
) -> list[Tracker]:
    trackers: list[Tracker] = []
    if tensorboard:
        trackers.append(TensorBoardTracker(out_dir / "tensorboard"))
    if wandb_project:
        trackers.append(WandbTracker(wandb_project, out_dir, config))
    return trackers
