"""Fixtures shared by the foundation tests: one lively tiny model, its directory, the tokenizer.

The model is the `tiny` preset with weights drawn wider than GPT-2's init, so that its greedy
continuations vary with context (a freshly initialised model just repeats one token, which would
let batching or caching bugs go unnoticed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.tokenizer import Tokenizer, get_tokenizer


def lively_tiny_model(seed: int = 2) -> GPT:
    """The `tiny` preset with wide random weights: N(0, 0.5), token embeddings N(0, 0.3), position
    embeddings N(0, 3), LayerNorm gains around 1. With this seed, 20 greedy tokens hold 11+ ids."""
    generator = torch.Generator().manual_seed(seed)
    model = GPT(get_preset("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean = 1.0 if ".ln_" in name or name.startswith("transformer.ln_f") else 0.0
            std = {"transformer.wte.weight": 0.3, "transformer.wpe.weight": 3.0}.get(name, 0.5)
            p.copy_(torch.randn(p.shape, generator=generator) * std + mean)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> GPT:
    """Shared and read-only: tests that change weights or modes must copy it first."""
    return lively_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> Path:
    return save_pretrained(tiny_model, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return get_tokenizer()
