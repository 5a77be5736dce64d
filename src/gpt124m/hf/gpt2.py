"""Hugging Face GPT-2 checkpoints in: Conv1D weights transposed, nothing dropped silently.

GPT-2's Conv1D stores weights as [in, out]; nn.Linear wants [out, in]. The only entries not
carried over are the constant causal-mask buffers of old checkpoints; an untied `lm_head`
(`tie_word_embeddings: false`, or a head that differs from `wte`) is refused, never re-tied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt124m.checkpoint import build_model, load_safetensors, load_torch_bin
from gpt124m.config import GPT2_VOCAB_SIZE, ModelConfig
from gpt124m.model import GPT

CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints


def config_from_gpt2(data: dict[str, Any], source: Path) -> ModelConfig:
    """Our config for a GPT-2 `config.json`; variants this architecture cannot express are refused."""
    activation = data.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{source}: activation_function {activation!r} is not GPT-2's tanh GELU")
    unsupported = {
        "layer_norm_epsilon": abs(data.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12,
        "n_inner": data.get("n_inner") not in (None, 4 * data.get("n_embd", 0)),
        "scale_attn_weights": data.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": bool(data.get("scale_attn_by_inverse_layer_idx")),
    }
    if data.get("tie_word_embeddings", True) is not True:
        raise ValueError(
            f"{source}: tie_word_embeddings={data['tie_word_embeddings']!r} (an untied output "
            "head) is not supported: gpt124m ties lm_head to wte and would change the model"
        )
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(
                f"{source}: {key}={data[key]!r} differs from GPT-2 and is not supported"
            )
    try:
        return ModelConfig(
            n_layer=data["n_layer"],
            n_head=data["n_head"],
            n_embd=data["n_embd"],
            block_size=data.get("n_positions", data.get("n_ctx", 1024)),
            vocab_size=data.get("vocab_size", GPT2_VOCAB_SIZE),
        )
    except KeyError as e:
        raise ValueError(f"{source}: GPT-2 config lacks {e}") from None


def read_gpt2_weights(model_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st = model_dir / "model.safetensors"
    if st.is_file():
        return load_safetensors(st), st
    legacy = model_dir / "pytorch_model.bin"
    if legacy.is_file():
        return load_torch_bin(legacy), legacy
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def gpt2_to_native(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names and layout; `lm_head.weight` is kept so `build_model` checks the tie."""
    state = {}
    for key, tensor in hf_state.items():
        if key.endswith(SKIPPED_SUFFIXES):
            continue
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        state[name] = tensor.contiguous()
    return state


def load_gpt2_dir(model_dir: Path, config_data: dict[str, Any]) -> GPT:
    config = config_from_gpt2(config_data, model_dir / "config.json")
    hf_state, weights_path = read_gpt2_weights(model_dir)
    state = gpt2_to_native(hf_state)
    return build_model(config, state, weights_path)  # in the dtype it was stored in, as ours
