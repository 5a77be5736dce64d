"""Check an export's weights before they go up: a readable safetensors file whose tensors are
the ones its config.json describes, by name and shape.

Only the file's header is read (names, shapes, byte ranges); safetensors refuses a header whose
byte ranges do not cover the file exactly, so a truncated or padded file is caught too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from gpt124m.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    TIED_KEYS,
    WEIGHTS_NAME,
    native_config,
    read_config,
    shape_mismatch,
)
from gpt124m.config import ModelConfig
from gpt124m.errors import first_line
from gpt124m.hf.gpt2 import CONV1D_SUFFIXES, config_from_gpt2
from gpt124m.model import GPT


def check_export_weights(folder: Path) -> None:
    """Raise ValueError (one line) unless `folder`'s weights are readable and match its config."""
    data = read_config(folder)
    if data.get("format") == FORMAT:
        layout, config = "remote-code", native_config(folder, data)
    elif data.get("model_type") == "gpt2":
        layout, config = "gpt2", config_from_gpt2(data, folder / CONFIG_NAME)
    else:
        raise ValueError(
            f"{folder / CONFIG_NAME}: not an export's config (neither gpt124m's format nor "
            "model_type gpt2); run `gpt124m export` first"
        )
    path = folder / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # noqa: SIM118 (safe_open is not iterable)
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: not a readable safetensors file ({first_line(e)}); export it again"
        ) from None
    detail = shape_mismatch(expected_shapes(config, layout), stored)
    if detail:
        raise ValueError(f"{path}: tensors do not match {CONFIG_NAME} ({detail}); export it again")


def expected_shapes(config: ModelConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """The tensors an export of `config` stores: ours (the head tied, so not stored), or GPT-2's
    (Conv1D weights transposed, the embedding cut to the real vocabulary)."""
    with torch.device("meta"):
        state = GPT(config).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if k not in TIED_KEYS}
    if layout == "gpt2":
        for name in shapes:
            if name.endswith(CONV1D_SUFFIXES):
                shapes[name] = shapes[name][::-1]
        shapes["transformer.wte.weight"] = (config.vocab_size, config.n_embd)
    return shapes
