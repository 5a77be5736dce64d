"""The seed's own published format (`samkeet/GPT_124M`, `model_type: custom_gpt`) in.

Its remote code saved a plain state dict as `pytorch_model.bin`: our parameter names under a
`model.` prefix, `nn.Linear` layout (nothing to transpose), the head tied to `wte`, and all 50,304
embedding rows trained. The rows stay as they are (the model never lets the padding ones out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt124m.checkpoint import build_model, config_for_rows, load_safetensors, load_torch_bin
from gpt124m.config import ModelConfig
from gpt124m.model import GPT

PREFIX = "model."
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size")


def config_from_seed(data: dict[str, Any], source: Path) -> ModelConfig:
    """Our config for a `custom_gpt` config.json (block_size, vocab_size, n_layer, ...)."""
    try:
        shape = {k: int(data[k]) for k in SHAPE_KEYS}
        rows = int(data["vocab_size"])
    except KeyError as e:
        raise ValueError(f"{source}: custom_gpt config lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: bad custom_gpt config ({e})") from None
    try:
        return config_for_rows(rows, **shape)
    except ValueError as e:
        raise ValueError(f"{source}: bad custom_gpt config ({e})") from None


def read_seed_weights(model_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name, read in (("model.safetensors", load_safetensors), ("pytorch_model.bin", None)):
        path = model_dir / name
        if path.is_file():
            return (read(path) if read else load_torch_bin(path)), path
    raise FileNotFoundError(f"{model_dir}: no pytorch_model.bin or model.safetensors")


def seed_to_native(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Strip the `model.` prefix; a key without it is not the seed's layout."""
    stray = sorted(k for k in state if not k.startswith(PREFIX))
    if stray:
        raise ValueError(
            f"{source}: not the custom_gpt layout (keys without the 'model.' prefix: "
            f"{', '.join(stray[:3])})"
        )
    return {k.removeprefix(PREFIX): v for k, v in state.items()}


def load_seed_dir(model_dir: Path, config_data: dict[str, Any]) -> GPT:
    config = config_from_seed(config_data, model_dir / "config.json")
    state, weights_path = read_seed_weights(model_dir)
    native = seed_to_native(state, weights_path)
    return build_model(config, native, weights_path)
