"""Export a model to a Hugging Face directory: with remote code (default) or as plain GPT-2.

`remote-code` writes our own model directory (same config keys, same tensor names, so
`gpt124m.checkpoint.load_model` reads it unchanged) plus the transformers keys, the remote
configuration/modeling files (a transformers adapter plus `gpt124m/model.py` itself, copied as
`gpt124m_network.py`), generation_config.json and a model card. transformers then loads it
with `trust_remote_code=True`, logits identical to ours over the real vocabulary.

`gpt2` converts to the layout of `transformers.GPT2LMHeadModel` (Conv1D weights, 50257-row
vocabulary), which loads with no remote code and which other GPT-2 tooling also reads.

Writing needs no transformers: both formats are plain JSON and safetensors. The directory is
built beside OUT_DIR and renamed into place, so a failed export never leaves half a directory.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gpt124m.atomic import atomic_path, atomic_write_text, default_dir_mode
from gpt124m.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_KEYS,
    WEIGHTS_NAME,
    read_config,
    save_pretrained,
)
from gpt124m.config import GPT2_VOCAB_SIZE, ModelConfig
from gpt124m.hf.card import CardInfo, render_card
from gpt124m.hf.destination import check_destination, move_into_place
from gpt124m.hf.gpt2 import CONV1D_SUFFIXES
from gpt124m.hf.hub import check_repo_id
from gpt124m.hf.layout import (  # noqa: F401  (re-exported: the export's names)
    ARCHITECTURE,
    ARTEFACTS,
    AUTO_MAP,
    DEFAULT_REPO_ID,
    FORMATS,
    GPT2_ARCHITECTURE,
    MODEL_TYPE,
    NETWORK_FILE,
    REMOTE_FILES,
)
from gpt124m.loading import load_model, resolve_source
from gpt124m.model import GPT
from gpt124m.tokenizer import EOT, EOT_ID, get_tokenizer

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which gpt124m.model uses
_RUN_KEYS = ("training", "results", "sft")  # what an export of a GPT-2 directory carries on
# transformers' own config settings: run metadata under these names would change how it loads.
_HF_RESERVED = {
    "architectures",
    "chunk_size_feed_forward",
    "dtype",
    "id2label",
    "is_encoder_decoder",
    "label2id",
    "name_or_path",
    "_name_or_path",
    "num_labels",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
    "torch_dtype",
    "torchscript",
    "transformers_version",
}


def export(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "remote-code",
    repo_id: str = DEFAULT_REPO_ID,
    license: str = "mit",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    force: bool = False,
) -> Path:
    """Export any model source (our directory, an export, a GPT-2 directory, a hub id).

    `repo_id` is the name the model card's usage snippets load; `datasets` and `base_model`
    default to what the run's metadata records. A non-empty OUT_DIR must be an earlier export,
    replaced only with `force` (`gpt124m.hf.destination`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_repo_id(repo_id)  # the name `push` will accept, or the card's snippets load nothing
    if not license.strip():
        raise ValueError("--license must not be empty (the card's license field)")
    # The card's metadata names these as hub repos: a local path there links to nowhere.
    named = [("--dataset", d) for d in datasets]
    if base_model:
        named.append(("--base-model", base_model))
    for flag, value in named:
        check_repo_id(value, flag)
        if Path(value).expanduser().exists():
            raise ValueError(f"{flag} {value!r}: a local path; the card names hub repos only")
    model_dir = resolve_source(source)
    out = Path(out_dir).expanduser()
    check_destination(out, model_dir, force)
    source_config = read_config(model_dir)
    model = load_model(model_dir)
    if model.config.vocab_size > GPT2_VOCAB_SIZE:
        log.warning(
            "%s predicts %s tokens, GPT-2's BPE has %s: the export's tokenizer is GPT-2's and "
            "never produces the others; put the tokenizer that added them beside the weights",
            source,
            f"{model.config.vocab_size:,}",
            f"{GPT2_VOCAB_SIZE:,}",
        )
    metadata = carried_metadata(source_config)
    from_hub = not Path(source).expanduser().is_dir()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    staging.chmod(default_dir_mode())  # it becomes OUT_DIR: readable as any folder made here
    try:
        if fmt == "remote-code":
            write_remote_code(model, staging, metadata)
        else:
            write_gpt2(model, staging, metadata)
        images = copy_artefacts(model_dir, staging)
        summary = _read_json(staging / "summary.json")
        recorded = _recorded_base_model(metadata)
        source_id = _hub_source(source, from_hub)
        card = CardInfo(
            repo_id=repo_id,
            fmt=fmt,
            model_config=model.config,
            license=license,
            datasets=tuple(datasets) or _datasets_from(metadata),
            base_model=base_model or recorded or source_id,
            converted=not (base_model or recorded) and source_id is not None,
            training=metadata.get("training"),
            results=metadata.get("results"),
            summary=summary,
            images=tuple(images),
        )
        atomic_write_text(staging / "README.md", render_card(card))
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (%s) to %s", source, fmt, out)
    return out


def carried_metadata(source_config: dict[str, Any]) -> dict[str, Any]:
    """Run metadata (training config, results, ...) that the export keeps in its config.json."""
    if source_config.get("format") != FORMAT:
        return {k: source_config[k] for k in _RUN_KEYS if k in source_config}
    ours = set(FORMAT_KEYS) | set(remote_code_hf_config(ModelConfig(), torch.float32))
    kept = {}
    for key, value in source_config.items():
        if key in ours:  # the export writes its own
            continue
        if key in _HF_RESERVED:
            log.warning("not carrying metadata key %r: transformers reads it as a setting", key)
        else:
            kept[key] = value
    return kept


def remote_code_hf_config(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The transformers half of an exported config.json (GPT124MConfig's fields)."""
    return {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "auto_map": dict(AUTO_MAP),
        "vocab_size": config.padded_vocab_size,  # embedding rows, as transformers counts them
        "tokenizer_vocab_size": config.vocab_size,  # ids past this get the lowest logit
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "dropout": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "pad_token_id": EOT_ID,
        "tie_word_embeddings": True,
        "torch_dtype": _dtype_name(dtype),
    }


def write_remote_code(model: GPT, out: Path, metadata: dict[str, Any]) -> None:
    dtype = model.transformer.wte.weight.dtype
    save_pretrained(model, out, metadata={**metadata, **remote_code_hf_config(model.config, dtype)})
    remote = importlib.resources.files("gpt124m.hf") / "remote"
    for name in REMOTE_FILES:
        atomic_write_text(out / name, (remote / name).read_text())
    atomic_write_text(
        out / NETWORK_FILE, (importlib.resources.files("gpt124m") / "model.py").read_text()
    )
    _finish_tokenizer(out, model.config.block_size, padding_side="left")
    _write_generation_config(out, model.config.block_size)


def gpt2_config(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """A `GPT2Config` for `config`: the real vocabulary, no padding rows."""
    return {
        "model_type": "gpt2",
        "architectures": [GPT2_ARCHITECTURE],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "tie_word_embeddings": True,
        "torch_dtype": _dtype_name(dtype),
    }


def native_to_gpt2(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict in GPT2LMHeadModel's layout: Linear -> Conv1D, padding rows dropped.

    The inverse of `gpt124m.hf.gpt2.gpt2_to_native` (which pads the vocabulary with zeros).
    """
    if config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {config.vocab_size} is smaller than GPT-2's {GPT2_VOCAB_SIZE}: "
            "this model cannot be written as a GPT-2 checkpoint"
        )
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        elif name == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def write_gpt2(model: GPT, out: Path, metadata: dict[str, Any]) -> None:
    dtype = model.transformer.wte.weight.dtype
    tensors = native_to_gpt2(model.state_dict(), model.config)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = {**gpt2_config(model.config, dtype), **metadata}
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    get_tokenizer().save_hf_files(out)
    _finish_tokenizer(out, model.config.block_size, padding_side="right")
    _write_generation_config(out, model.config.block_size)


def copy_artefacts(model_dir: Path, out: Path) -> list[str]:
    """Copy the run summary and plots; return the names of the images copied."""
    images = []
    for name in ARTEFACTS:
        src = model_dir / name
        if src.is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
            if name.endswith(".png"):
                images.append(name)
    return images


def _finish_tokenizer(out: Path, block_size: int, padding_side: str) -> None:
    """Context length from the model; EOT doubles as padding. The remote code counts positions
    over real tokens, so it pads on the left, as generation wants; `GPT2LMHeadModel.forward`
    counts them from the row's start, so the gpt2 format pads on the right as GPT-2's own
    tokenizer does (a left-padded forward pass shifts every short row's positions, silently;
    `generate` callers set the left side themselves, and transformers warns them if not)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(model_max_length=block_size, pad_token=EOT, padding_side=padding_side)
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    special_path = out / "special_tokens_map.json"
    special = json.loads(special_path.read_text())
    special["pad_token"] = EOT
    atomic_write_text(special_path, json.dumps(special, indent=2) + "\n")


def _write_generation_config(out: Path, block_size: int) -> None:
    """EOT ends and pads, and nothing else: no length. A stored `max_length` or `max_new_tokens`
    competes with the caller's own (transformers then warns that both are set, and may ignore
    the caller's), so every length a user passes, either kind, is taken as given. The model
    itself refuses to run past its context (`block_size`)."""
    del block_size
    config = {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID}
    atomic_write_text(out / "generation_config.json", json.dumps(config, indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def _datasets_from(metadata: dict[str, Any]) -> tuple[str, ...]:
    training = metadata.get("training") or {}
    value = training.get("datasets", training.get("dataset"))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and _recorded_hub_id(v))


def _recorded_base_model(metadata: dict[str, Any]) -> str | None:
    """The hub id the run recorded training from (fine-tuning, or further pretraining)."""
    value = (metadata.get("training") or {}).get("base_model")
    return value if isinstance(value, str) and _recorded_hub_id(value) else None


def _recorded_hub_id(text: str) -> bool:
    """A run records local paths as `./a/b` (`sft.config.recorded_source`); an older run as
    `a/b`, so one that exists here is taken as local too."""
    return _looks_like_hub_id(text) and not Path(text).expanduser().exists()


def _hub_source(source: Any, from_hub: bool) -> str | None:
    """The hub id of a checkpoint exported as is (GPT-2's, the seed's `custom_gpt`, another
    gpt124m export): what this export is a conversion of."""
    return str(source) if from_hub and _looks_like_hub_id(str(source)) else None


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
