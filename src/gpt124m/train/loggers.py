"""Optional experiment trackers (TensorBoard, Weights & Biases) fed from the metrics log.

metrics.jsonl stays the source of truth; a tracker receives the numeric fields of each record as
`{kind}/{field}` scalars at the record's step. Both are optional extras: `pip install -e ".[logging]"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

SKIPPED = ("kind", "step", "tokens")


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
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "--tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("step", 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Honours WANDB_MODE (e.g. `offline` on machines without network)."""

    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "--wandb-project") from None
        self.run = wandb.init(project=project, dir=str(run_dir), config=config, name=run_dir.name)

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
