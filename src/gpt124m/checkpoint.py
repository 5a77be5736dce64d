"""Model directories: `config.json` + `model.safetensors` (+ tokenizer files).

One loader, `load_model`, accepts every source a command's `--model` takes: our own directories,
Hugging Face GPT-2 directories and hub ids. Nothing is ever unpickled: weights come from
safetensors, or from `torch.load(weights_only=True)` for old GPT-2 `.bin` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt124m.atomic import atomic_path, atomic_write_text
from gpt124m.config import ModelConfig
from gpt124m.model import GPT

FORMAT = "gpt124m"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TIED_KEYS = ("lm_head.weight",)  # stored once, as transformer.wte.weight


def save_pretrained(
    model: GPT,
    out_dir: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    tokenizer_files: bool = True,
) -> Path:
    """Write a model directory atomically, file by file; `metadata` lands in config.json."""
    reserved = sorted(set(metadata or {}) & {"format", "format_version", "model"})
    if reserved:
        raise ValueError(f"metadata may not set {', '.join(reserved)}: save_pretrained writes them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if k not in TIED_KEYS
    }
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": "gpt2",
        **(metadata or {}),
    }
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    if tokenizer_files:
        from gpt124m.tokenizer import get_tokenizer

        get_tokenizer().save_hf_files(out)
    return out


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a model directory needs {CONFIG_NAME}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable or truncated safetensors file ({e})") from None


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor], source: Path) -> GPT:
    """Instantiate without random init (meta device) and assign the loaded tensors."""
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED_KEYS}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - set(TIED_KEYS))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(s)}"
        for k, s in expected.items()
        if k in state_dict and state_dict[k].shape != s
    )
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing: {', '.join(missing[:5])}" if missing else "",
                f"unexpected: {', '.join(unexpected[:5])}" if unexpected else "",
                f"wrong shape: {', '.join(wrong[:5])}" if wrong else "",
            )
            if part
        )
        raise ValueError(f"{source}: weights do not match the config ({detail})")
    state = {k: v for k, v in state_dict.items() if k not in TIED_KEYS}
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    return model


def native_config(model_dir: Path, config_data: dict[str, Any]) -> ModelConfig:
    version = config_data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{model_dir / CONFIG_NAME}: format_version {version!r} is not supported "
            f"(this gpt124m reads {FORMAT_VERSION})"
        )
    try:
        return ModelConfig.from_dict(config_data["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{model_dir / CONFIG_NAME}: bad model config ({e})") from None


def resolve_source(source: str | os.PathLike, *, config_only: bool = False) -> Path:
    """A local directory as is; otherwise a Hugging Face hub id, downloaded into the HF cache.

    `config_only` fetches just `config.json` from the hub (enough to describe a model).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists():
        raise NotADirectoryError(f"{source}: not a model directory (it is a file)")
    if text.startswith((".", "/", "~")) or not _is_repo_id(text):
        raise FileNotFoundError(f"{source}: not a model directory (no such directory)")
    from huggingface_hub import snapshot_download

    patterns = (
        [CONFIG_NAME]
        if config_only
        else ["*.json", "*.safetensors", "*.py", "*.txt", "*.md", "*.png"]
    )
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"{source}: not a local directory, and downloading it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {e})"
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
    if data.get("model_type") == "gpt2":
        return "gpt2"
    raise ValueError(
        f"{model_dir / CONFIG_NAME}: unrecognised model directory (neither a gpt124m "
        f"directory nor a GPT-2 checkpoint; model_type={data.get('model_type')!r})"
    )


def model_config(source: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of any model source, without reading (or downloading) its weights."""
    model_dir = resolve_source(source, config_only=True)
    data = read_config(model_dir)
    if _source_kind(model_dir, data) == "native":
        return native_config(model_dir, data)
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
    if _source_kind(model_dir, data) == "native":
        weights = model_dir / WEIGHTS_NAME
        model = build_model(native_config(model_dir, data), load_safetensors(weights), weights)
    else:
        from gpt124m.hf.gpt2 import load_gpt2_dir

        model = load_gpt2_dir(model_dir, data)
    model.to(device=device, dtype=dtype)
    return model.eval()
