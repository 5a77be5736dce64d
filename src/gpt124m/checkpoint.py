"""Model directories: `config.json` + `model.safetensors` (+ tokenizer files).

This module is the native format (and the readers the foreign formats share); `loading.py` turns
any source a command's `--model` takes into a model. Nothing is ever unpickled: weights come from safetensors, or from
`torch.load(weights_only=True)` for `.bin` files.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt124m.atomic import atomic_path, atomic_write_text
from gpt124m.config import GPT2_VOCAB_SIZE, ModelConfig
from gpt124m.errors import first_line
from gpt124m.model import GPT

log = logging.getLogger(__name__)

FORMAT = "gpt124m"
# 2: `model.vocab_size` is the tokenizer's vocabulary and the padding is `vocab_multiple`;
# 1 stored the padded row count as `vocab_size` (still read).
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Keys of config.json that save_pretrained owns: they describe the weights, never the run.
FORMAT_KEYS = ("format", "format_version", "model", "tokenizer")
TIED_KEYS = ("lm_head.weight",)  # stored once, as transformer.wte.weight


def save_pretrained(
    model: GPT,
    out_dir: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    tokenizer_files: bool = True,
) -> Path:
    """Write a model directory atomically, file by file; `metadata` lands in config.json."""
    reserved = sorted(set(metadata or {}) & set(FORMAT_KEYS))
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable or truncated safetensors file ({e})") from None


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor], source: Path) -> GPT:
    """Instantiate without random init (meta device) and assign the loaded tensors.

    The token embedding may come with the padded row count or with exactly `vocab_size` rows (a
    GPT-2 checkpoint); missing padding rows are zeros, which no output ever reads. A stored
    `lm_head.weight` must equal the embedding: the head is tied, and an untied one is refused
    rather than silently replaced.
    """
    state_dict = dict(state_dict)
    head = state_dict.pop("lm_head.weight", None)
    wte = state_dict.get("transformer.wte.weight")
    if head is not None and (wte is None or head.shape != wte.shape or not torch.equal(head, wte)):
        raise ValueError(
            f"{source}: lm_head.weight differs from transformer.wte.weight (an untied output "
            "head); gpt124m models tie them, so this checkpoint is not supported"
        )
    _check_shape(config, state_dict, source)
    rows = config.padded_vocab_size
    if wte is not None and wte.dim() == 2 and wte.size(0) == config.vocab_size < rows:
        pad = wte.new_zeros(rows - wte.size(0), wte.size(1))
        state_dict["transformer.wte.weight"] = torch.cat([wte, pad])
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED_KEYS}
    detail = shape_mismatch(expected, {k: v.shape for k, v in state_dict.items()})
    if detail:
        raise ValueError(f"{source}: weights do not match the config ({detail})")
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    return model


def _check_shape(config: ModelConfig, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """The config's depth, width and context against the weights, before a model is built: a
    config that says 100,000 layers would take minutes to build (even on the meta device) only
    to be refused, and an absurd width overflows torch's size arithmetic."""
    layers = {k.split(".")[2] for k in state_dict if k.startswith("transformer.h.")}
    held = {
        "n_layer": len(layers),
        "n_embd": _size(state_dict, "transformer.wte.weight", 1),
        "block_size": _size(state_dict, "transformer.wpe.weight", 0),
    }
    for key, value in held.items():
        if value is not None and value != getattr(config, key):
            raise ValueError(
                f"{source}: the config's {key} is {getattr(config, key):,}, but the weights "
                f"have {value:,}"
            )


def _size(state_dict: dict[str, torch.Tensor], key: str, dim: int) -> int | None:
    tensor = state_dict.get(key)
    return tensor.size(dim) if tensor is not None and tensor.dim() == 2 else None


def shape_mismatch(expected: dict[str, Any], stored: dict[str, Any]) -> str:
    """How `stored` tensor shapes differ from `expected` (names to shapes), or "" if not."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(
        f"{k} {tuple(stored[k])} != {tuple(s)}"
        for k, s in expected.items()
        if k in stored and tuple(stored[k]) != tuple(s)
    )
    return "; ".join(
        part
        for part in (
            f"missing: {', '.join(missing[:5])}" if missing else "",
            f"unexpected: {', '.join(unexpected[:5])}" if unexpected else "",
            f"wrong shape: {', '.join(wrong[:5])}" if wrong else "",
        )
        if part
    )


def config_for_rows(rows: int, **shape: int) -> ModelConfig:
    """The config of a checkpoint that stores `rows` embedding rows and reads GPT-2 BPE.

    Formats that record only the row count (the seed's, our version 1) padded GPT-2's 50,257
    ids; fewer rows mean a smaller vocabulary with no padding.
    """
    if rows < GPT2_VOCAB_SIZE:
        return ModelConfig(vocab_size=rows, vocab_multiple=1, **shape)
    multiple = 64 if ModelConfig(**shape).padded_vocab_size == rows else rows
    return ModelConfig(vocab_size=GPT2_VOCAB_SIZE, vocab_multiple=multiple, **shape)


def load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A `pytorch_model.bin` read with `weights_only=True`: tensors only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: refused: the pickle holds more than tensors, and gpt124m never runs code "
            "from a weights file (convert it to safetensors with a tool you trust)"
        ) from None
    except Exception as e:
        raise ValueError(f"{path}: unreadable weights file ({first_line(e)})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a state dict of named tensors")
    return state


def native_config(model_dir: Path, config_data: dict[str, Any]) -> ModelConfig:
    version = config_data.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(
            f"{model_dir / CONFIG_NAME}: format_version {version!r} is not supported "
            f"(this gpt124m reads 1 to {FORMAT_VERSION})"
        )
    try:
        fields = dict(config_data["model"])
        if version == 1:  # vocab_size was the padded row count
            return config_for_rows(fields.pop("vocab_size"), **fields)
        return ModelConfig.from_dict(fields)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{model_dir / CONFIG_NAME}: bad model config ({e})") from None
