"""Model directories: `config.json` + `model.safetensors` (+ tokenizer files).

One loader, `load_model`, accepts every source a command's `--model` takes: our own directories,
Hugging Face GPT-2 directories, the seed's own published format (`custom_gpt`) and hub ids of
either. Nothing is ever unpickled: weights come from safetensors, or from
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
from gpt124m.model import GPT

log = logging.getLogger(__name__)

FORMAT = "gpt124m"
# 2: `model.vocab_size` is the tokenizer's vocabulary and the padding is `vocab_multiple`;
# 1 stored the padded row count as `vocab_size` (still read).
FORMAT_VERSION = 2
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
    rows = config.padded_vocab_size
    if wte is not None and wte.dim() == 2 and wte.size(0) == config.vocab_size < rows:
        pad = wte.new_zeros(rows - wte.size(0), wte.size(1))
        state_dict["transformer.wte.weight"] = torch.cat([wte, pad])
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED_KEYS}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
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
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    return model


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: unreadable weights file ({first})") from None
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


def resolve_source(source: str | os.PathLike, *, config_only: bool = False) -> Path:
    """A local directory as is; otherwise a Hugging Face hub id, downloaded into the HF cache.

    Anything that looks local (a path that starts with `.`, `/` or `~`, or whose first part is
    a local directory) or is a bare name (a preset such as `gpt2`, or a typo) fails at once with
    one line, without touching the network. `config_only` fetches just `config.json` from the
    hub (enough to describe a model).
    """
    path = Path(source).expanduser()
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
    first = Path(text.split("/", 1)[0]).expanduser()
    if text.startswith((".", "/", "~")) or first.is_dir() or not _is_repo_id(text):
        raise FileNotFoundError(f"{source}: no such model directory")
    return _download(text, config_only=config_only)


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


def load_for_training(source: str | os.PathLike) -> GPT:
    """Load any source with float32 master weights, whatever dtype it was stored in.

    Optimizer updates on bf16/fp16 weights round small steps away; autocast, not the stored
    dtype, decides the precision of the compute.
    """
    model = load_model(source)
    stored = next(model.parameters()).dtype
    model.float()
    log.info(
        "loaded %s (%s weights): training float32 master weights",
        source,
        str(stored).removeprefix("torch."),
    )
    return model.train()
