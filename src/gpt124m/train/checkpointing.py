"""Training checkpoints: everything needed to continue bit for bit, written atomically.

A checkpoint is a directory `step_0000100/` that is also a model directory (config.json +
model.safetensors), so every command that takes `--model` accepts it. Beside the weights:
`optimizer.pt` (optimizer, grad-scaler), `rank_00000.pt`... (each rank's RNG and loader state)
and `trainer_state.json` (step, tokens, training time so far, sha256 of every file). All files
are written into `step_0000100.tmp/`, which is renamed into place only when complete; loading
verifies the hashes and falls back to an older checkpoint when one is corrupt. Nothing is
unpickled: `torch.load(weights_only=True)` reads only tensors and plain containers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from gpt124m import collectives
from gpt124m.atomic import atomic_write_text, fsync_dir, fsync_file
from gpt124m.checkpoint import TIED_KEYS, WEIGHTS_NAME, load_safetensors, save_pretrained
from gpt124m.data.shards import sha256_file as _sha256
from gpt124m.errors import first_line
from gpt124m.model import GPT
from gpt124m.train import distributed

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CorruptCheckpoint(ValueError):
    pass


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # This process's device only: a resume may see a different set of GPUs.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _checkpoints_by_step(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the complete checkpoints, oldest first; temp dirs are ignored."""
    if not ckpt_root.is_dir():
        return []
    return sorted(
        (int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name))
    )


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint dirs, oldest first (temp dirs of interrupted writes are ignored)."""
    return [p for _, p in _checkpoints_by_step(ckpt_root)]


@dataclass
class TrainingState:
    step: int
    tokens_seen: int
    train_seconds: float  # wall time of the timeline up to this step (0 if not recorded)
    optimizer_state: dict[str, Any]
    scaler_state: dict[str, Any] | None
    rank_state: dict[str, Any]
    path: Path


def save(
    ckpt_root: Path,
    *,
    step: int,
    tokens_seen: int,
    train_seconds: float,
    model,
    optimizer_state: dict[str, Any] | None,
    scaler_state: dict[str, Any] | None,
    loader_state: dict[str, Any],
    metadata: dict[str, Any],
    info: distributed.Dist,
    keep: int,
) -> Path:
    """Collective: every rank writes its own state; rank 0 writes the rest, then renames.

    `model` is a plain GPT holding the full weights (on rank 0; ignored elsewhere).
    """
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f"step_{step:07d}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    collectives.barrier()
    rank_file = tmp / f"rank_{info.rank:05d}.pt"
    with _writing(tmp, final):
        torch.save({"rng": rng_state(), "loader": json.dumps(loader_state)}, rank_file)
    collectives.barrier()
    if info.is_main:
        with _writing(tmp, final):
            _save_weights(model, tmp, metadata)
            optimizer = {"optimizer": optimizer_state, "scaler": scaler_state}
            torch.save(optimizer, tmp / OPTIMIZER_NAME)
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            fsync_file(tmp / name)
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "train_seconds": round(train_seconds, 3),
            "world_size": info.world_size,
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=2) + "\n")  # fsyncs `tmp`
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(ckpt_root)  # the new checkpoint is durable before any old one is deleted
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    collectives.barrier()
    return final


@contextlib.contextmanager
def _writing(tmp: Path, final: Path) -> Iterator[None]:
    """A write that fails (a full disk: torch reports it as a RuntimeError, safetensors as its
    own error) removes the partial checkpoint and says so in a line; the checkpoints before it
    are untouched."""
    try:
        yield
    except (RuntimeError, OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"{final}: checkpoint not written ({first_line(e)}); is the disk full? The earlier "
            "checkpoints are kept"
        ) from None


def _save_weights(model: nn.Module, out: Path, metadata: dict[str, Any]) -> None:
    """A plain GPT becomes a model directory; wrapped models (e.g. LoRA) keep their own names."""
    if isinstance(model, GPT):
        save_pretrained(model, out, metadata=metadata, tokenizer_files=False)
        return
    save_model(model, str(out / WEIGHTS_NAME))
    atomic_write_text(
        out / "config.json", json.dumps({"format": "gpt124m-training", **metadata}, indent=2)
    )


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into `model` in place (the counterpart of `_save_weights`)."""
    weights = path / WEIGHTS_NAME
    try:
        if not isinstance(model, GPT):
            load_model(model, str(weights), strict=True)
            return
        state = load_safetensors(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch's "size mismatch for ..." list, many lines long
        lines = str(e).strip().splitlines()
        detail = next((line.strip() for line in lines if "size mismatch" in line), lines[0])
        raise ValueError(
            f"{weights}: written for a model of another shape ({detail}); resume with the "
            "run's own --model"
        ) from None
    if unexpected or set(missing) - set(TIED_KEYS):
        raise ValueError(
            f"{weights}: weights do not fit this model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def verify(path: Path) -> dict[str, Any]:
    """Parse trainer_state.json and check every file's hash; raise CorruptCheckpoint if not."""
    state_file = path / STATE_NAME
    try:
        state = json.loads(state_file.read_text())
        hashes = state["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptCheckpoint(f"{state_file}: unreadable ({e})") from None
    for name, expected in hashes.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpoint(f"{file}: missing")
        if _sha256(file) != expected:
            raise CorruptCheckpoint(f"{file}: sha256 mismatch (truncated or modified)")
    return state


def set_aside_newer(ckpt_root: Path, step: int) -> list[Path]:
    """Rename the checkpoints past `step` out of the run's way; nothing is deleted.

    They belong to a timeline the run has left (a rollback to an older checkpoint) or were
    skipped as corrupt. Left in place, keep-last-K pruning would delete the new checkpoints
    before them and `--resume auto` would jump back to them.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path_step, path in _checkpoints_by_step(ckpt_root):
        if path_step > step:
            target = path.with_name(f"{path.name}.set-aside-{stamp}")
            path.rename(target)
            moved.append(target)
    return moved


def check_resume(resume: str) -> Path | None:
    """The checkpoint `--resume` names (None for `none` and `auto`), or an error that says what
    the path is instead: missing, a file, a model directory, or something else."""
    if resume in ("none", "auto"):
        return None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    if not path.is_dir():
        raise NotADirectoryError(f"--resume {resume}: a file, not a checkpoint directory")
    if not (path / STATE_NAME).is_file():
        what = "a model directory" if (path / "config.json").is_file() else "a directory"
        raise ValueError(
            f"--resume {resume}: {what}, not a training checkpoint (no {STATE_NAME}); resume "
            "from OUT_DIR/checkpoints/step_N or `auto`, or start a new run from a model "
            "directory's weights with --model (train) or --base (sft)"
        )
    return path


def find_resumable(ckpt_root: Path) -> Path | None:
    """Newest checkpoint that verifies; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify(path)
            return path
        except CorruptCheckpoint as e:
            log.warning("skipping corrupt checkpoint %s: %s", path.name, e)
    return None


def _load_tensors(file: Path) -> Any:
    """A state file read with `weights_only`: one holding anything else is refused in a line
    (its hash matched, so it was written so, not damaged since)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{file}: refused: the pickle holds more than tensors and plain data, and gpt124m "
            "never runs code from a checkpoint"
        ) from None


def load(path: Path, info: distributed.Dist) -> TrainingState:
    state = verify(path)
    if state["world_size"] != info.world_size:
        raise ValueError(
            f"{path}: written by {state['world_size']} ranks, resuming with {info.world_size}; "
            "exact resume needs the same world size"
        )
    opt = _load_tensors(path / OPTIMIZER_NAME)
    rank = _load_tensors(path / f"rank_{info.rank:05d}.pt")
    return TrainingState(
        step=state["step"],
        tokens_seen=state["tokens_seen"],
        train_seconds=float(state.get("train_seconds", 0.0)),
        optimizer_state=opt["optimizer"],
        scaler_state=opt["scaler"],
        rank_state={"rng": rank["rng"], "loader": json.loads(rank["loader"])},
        path=path,
    )
