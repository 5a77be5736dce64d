"""LoRA through peft on our GPT: which layers get adapters, the trainable-count check, saving the
adapter in peft's format, and merging back into a plain, standalone GPT.

`default` targets every projection of a GPT-2 block: `c_attn`, attention `c_proj`, `c_fc` and MLP
`c_proj`. `all-linear` is peft's convention (every linear layer except the output head); for the
GPT-2 architecture that is the same set, since the head is tied to the token embedding and is
never adapted (an adapter there, merged, would also change the embedding).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from gpt124m.model import GPT

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # c_proj matches attn.c_proj and mlp.c_proj


def target_modules(model: GPT, targets: str = "default") -> list[str]:
    """Full names of the nn.Linear layers that get adapters (`targets` as `--lora-targets`)."""
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("transformer.h.")
    ]
    if targets in ("default", "all-linear"):
        suffixes = DEFAULT_TARGETS if targets == "default" else None
    else:
        suffixes = tuple(t.strip() for t in targets.split(",") if t.strip())
    chosen = [
        n
        for n in linear
        if suffixes is None or any(n == s or n.endswith("." + s) for s in suffixes)
    ]
    if not chosen:
        known = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"--lora-targets {targets!r} matches no linear layer; use default, all-linear or "
            f"names from: {', '.join(known)}"
        )
    return chosen


def expected_trainable(model: GPT, modules: list[str], r: int) -> int:
    """LoRA adds A (r x in) and B (out x r) per adapted layer: r * (in + out) parameters."""
    layers = dict(model.named_modules())
    return sum(r * (layers[n].in_features + layers[n].out_features) for n in modules)


def apply_lora(
    model: GPT,
    *,
    r: int = 8,
    alpha: int = 8,
    dropout: float = 0.05,
    targets: str = "default",
    base_name: str | None = None,
):
    """Wrap `model` in a peft LoRA model whose only trainable parameters are the adapters."""
    import peft

    modules = target_modules(model, targets)
    expected = expected_trainable(model, modules, r)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # short names, as peft matches them against module-name suffixes; the count check
        # below confirms they select exactly `modules`
        target_modules=sorted({n.split("transformer.h.", 1)[1].split(".", 1)[1] for n in modules}),
        bias="none",
    )
    total = sum(p.numel() for p in model.parameters())
    wrapped = peft.get_peft_model(model, config)
    # peft takes the name from `model.name_or_path`, which a plain nn.Module lacks
    wrapped.peft_config["default"].base_model_name_or_path = base_name
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    count = sum(p.numel() for p in trainable.values())
    strays = [n for n in trainable if ".lora_A." not in n and ".lora_B." not in n]
    if strays or count != expected:
        raise RuntimeError(
            f"LoRA setup trains {count:,} parameters, expected {expected:,} "
            f"(r * (in + out) over {len(modules)} layers); non-adapter: {strays[:3]}"
        )
    log.info(
        "LoRA r=%d alpha=%d dropout=%s on %d layers: %s trainable parameters (%.2f%% of %s)",
        r,
        alpha,
        dropout,
        len(modules),
        f"{count:,}",
        100 * count / total,
        f"{total:,}",
    )
    return wrapped


def unwrap(model: nn.Module) -> nn.Module:
    """The GPT inside a peft model (with adapters active), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def save_adapter(peft_model, out_dir: str | Path) -> Path:
    """Write the adapter in peft's format (adapter_model.safetensors + adapter_config.json),
    into a temp folder renamed into place, so a crash never leaves a partial adapter."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # embeddings are never adapted; "auto" would look the base up on the Hub to decide
    peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_adapter(base: GPT, adapter_dir: str | Path):
    """A peft model: `base` with the adapter saved in `adapter_dir` (inference mode)."""
    import peft

    return peft.PeftModel.from_pretrained(base, str(adapter_dir))


@torch.no_grad()
def merge(peft_model, probe: torch.Tensor | None = None) -> tuple[GPT, float | None]:
    """Fold the adapters into the base weights; returns the plain GPT and, given a `probe` batch
    of token ids, the largest absolute logit difference between adapter and merged model."""
    gpt = unwrap(peft_model)
    was_training = peft_model.training
    peft_model.eval()
    before = None
    if probe is not None:
        probe = probe.to(next(gpt.parameters()).device)
        before = peft_model(probe)[0].float()
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, GPT):
        raise TypeError(f"merging produced {type(merged).__name__}, expected GPT")
    diff = None
    if before is not None:
        diff = float((merged(probe)[0].float() - before).abs().max())
    merged.train(was_training)
    return merged, diff
