"""Any model source a command's `--model` takes, as a `GPT`: our own directories (the native format
in `checkpoint.py`), Hugging Face GPT-2 directories (`hf/gpt2.py`), the seed's `custom_gpt`
directories (`hf/seed.py`), and hub ids of any of them. The dispatch lives here, beside neither
format, so that the native format module needs no importer and nothing imports in a circle.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from gpt124m.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    build_model,
    load_safetensors,
    native_config,
    read_config,
)
from gpt124m.config import ModelConfig
from gpt124m.model import GPT

log = logging.getLogger(__name__)


def resolve_source(source: str | os.PathLike, *, config_only: bool = False) -> Path:
    """A local directory as is; otherwise a Hugging Face hub id, downloaded into the HF cache.

    Anything that looks local (a path that starts with `.`, `/` or `~`, or whose first part is
    a local directory) or is a bare name (a preset such as `gpt2`, or a typo) fails at once with
    one line, without touching the network. `config_only` fetches just `config.json` from the
    hub (enough to describe a model).
    """
    path = _expanded(str(source))
    if path.is_dir():
        return path
    text = str(source)
    if path.exists():
        raise NotADirectoryError(f"{source}: not a model directory (it is a file)")
    if "/" not in text.strip("/") and not text.startswith((".", "/", "~")):
        from gpt124m.config import PRESETS

        if text in PRESETS:
            raise FileNotFoundError(
                f"{source}: is a preset (an untrained shape), not a trained model; pass a model "
                "directory or a hub id such as openai-community/gpt2"
            )
        raise FileNotFoundError(
            f"{source}: no such model directory, and not a hub id (hub ids read owner/name, "
            "e.g. openai-community/gpt2)"
        )
    first = _expanded(text.split("/", 1)[0])
    if text.startswith((".", "/", "~")) or first.is_dir() or not _is_repo_id(text):
        raise FileNotFoundError(f"{source}: no such model directory")
    return _download(text, config_only=config_only)


def _expanded(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # `~name/...` for a user this machine does not have
        raise FileNotFoundError(
            f"{text}: no such model directory (no user {text.split('/')[0][1:]!r} here)"
        ) from None


def _download(repo_id: str, *, config_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        if config_only:
            return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME]))
        patterns = [CONFIG_NAME, "*.json", "*.py", "*.txt", "*.md", "*.png", "*.safetensors"]
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(local.glob("*.safetensors")):  # older repos, and the seed's, ship only a .bin
            local = Path(
                snapshot_download(repo_id, allow_patterns=[*patterns, "pytorch_model.bin"])
            )
        return local
    except Exception as e:
        from huggingface_hub.errors import LocalEntryNotFoundError

        if isinstance(e, LocalEntryNotFoundError):
            reason = "the Hub is unreachable (offline?) and it is not in the local cache"
        else:
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        raise FileNotFoundError(
            f"{repo_id}: no such local directory, and downloading it from the Hugging Face Hub "
            f"failed ({reason})"
        ) from None


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _source_kind(model_dir: Path, data: dict[str, Any]) -> str:
    if data.get("format") == FORMAT:
        return "native"
    if data.get("model_type") in ("gpt2", "custom_gpt"):
        return data["model_type"]
    raise ValueError(
        f"{model_dir / CONFIG_NAME}: unrecognised model directory (not a gpt124m directory, a "
        f"GPT-2 checkpoint or the seed's custom_gpt format; model_type="
        f"{data.get('model_type')!r})"
    )


def fresh_model(preset: str, *, dropout: float = 0.0, seed: int = 0) -> GPT:
    """A preset at GPT-2 init (seeded), refused in one line where its fp32 weights alone do not
    fit the host's memory (`gpt3-175b` needs 650 GiB: the kernel would kill the process with no
    word, minutes in)."""
    from gpt124m.config import PRESETS
    from gpt124m.device import available_host_memory

    config = dataclasses.replace(PRESETS[preset].config, dropout=dropout)
    need, have = config.memory_bytes()["fp32_weights"], available_host_memory()
    if have is not None and need > have:
        raise ValueError(
            f"{preset}: its fp32 weights alone need {need / 2**30:,.1f} GiB, and this machine "
            f"has about {have / 2**30:,.1f} GiB of memory available "
            f"(`gpt124m info --preset {preset}` shows what training needs)"
        )
    torch.manual_seed(seed)
    return GPT(config)


def model_config(source: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of any model source, without reading (or downloading) its weights."""
    model_dir = resolve_source(source, config_only=True)
    data = read_config(model_dir)
    kind = _source_kind(model_dir, data)
    if kind == "native":
        return native_config(model_dir, data)
    if kind == "custom_gpt":
        from gpt124m.hf.seed import config_from_seed

        return config_from_seed(data, model_dir / CONFIG_NAME)
    from gpt124m.hf.gpt2 import config_from_gpt2

    return config_from_gpt2(data, model_dir / CONFIG_NAME)


def load_model(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> GPT:
    """Load any supported model source, in eval mode, on `device` (and `dtype` if given)."""
    model_dir = resolve_source(source)
    data = read_config(model_dir)
    kind = _source_kind(model_dir, data)
    if kind == "native":
        weights = model_dir / WEIGHTS_NAME
        model = build_model(native_config(model_dir, data), load_safetensors(weights), weights)
    elif kind == "custom_gpt":
        from gpt124m.hf.seed import load_seed_dir

        model = load_seed_dir(model_dir, data)
    else:
        from gpt124m.hf.gpt2 import load_gpt2_dir

        model = load_gpt2_dir(model_dir, data)
    model.to(device=device, dtype=dtype)
    return model.eval()


def load_for_training(source: str | os.PathLike, *, dropout: float | None = None) -> GPT:
    """Load any source with float32 master weights, whatever dtype it was stored in, and with
    `dropout` (if given) in place of the stored one: the run's setting, not the saved model's.

    Optimizer updates on bf16/fp16 weights round small steps away; autocast, not the stored
    dtype, decides the precision of the compute.
    """
    model = load_model(source)
    if dropout is not None and model.config.dropout != dropout:
        config = dataclasses.replace(model.config, dropout=dropout)
        model = build_model(config, model.state_dict(), Path(source))
    stored = next(model.parameters()).dtype
    model.float()
    log.info(
        "loaded %s (%s weights): training float32 master weights",
        source,
        str(stored).removeprefix("torch."),
    )
    return model.train()
