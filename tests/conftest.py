"""Fixtures shared across the suite: one lively tiny model, its directory, the tokenizer, and an
in-memory batch source for training loops.

The model is the `tiny` preset with weights drawn wider than GPT-2's init, so that its greedy
continuations vary with context (a freshly initialised model just repeats one token, which would
let batching or caching bugs go unnoticed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.cli import HUGE_PAGES_ENV
from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.tokenizer import Tokenizer, get_tokenizer
from gpt124m.train.config import TrainConfig

# As the `gpt124m` command runs: PyTorch reads this at its first CPU allocation, which comes after
# this point, so the tests that call the CLI in this process train in huge pages as it does.
os.environ.setdefault(HUGE_PAGES_ENV, "1")


def share_the_cores() -> None:
    """Under pytest-xdist, each worker (and each process its tests start) takes its share of the
    cores: torch's default of all of them in every worker oversubscribes the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


share_the_cores()


def pytest_collection_modifyitems(items) -> None:
    """Longest first (by `slow(seconds=N)`; other slow tests count 30 s): with workers, the run
    then ends soon after its longest test, which would otherwise start minutes in."""

    def seconds(item) -> float:
        marker = item.get_closest_marker("slow")
        return 0 if marker is None else marker.kwargs.get("seconds", 30)

    items.sort(key=seconds, reverse=True)


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile (Inductor) on CPU needs a C++ compiler",
)
needs_muon = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is new in torch 2.9"
)


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


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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


class FixedBatches:
    """An in-memory BatchSource: the same or cycling batches, with a resumable position."""

    def __init__(self, n_batches=1, batch_size=4, seq_len=32, vocab=1000, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [
            torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
            for _ in range(n_batches)
        ]
        self.i = 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b[:, :-1], b[:, 1:]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


@pytest.fixture
def fixed_batches():
    return FixedBatches


def tiny_run_config(tmp_path: Path, **overrides) -> TrainConfig:
    """A 4-step fp32 run of FixedBatches-sized batches with every periodic job off."""
    base = dict(
        out_dir=str(tmp_path / "run"),
        seq_len=32,
        micro_batch_size=4,
        total_batch_tokens=128,
        max_steps=4,
        warmup_steps=1,
        precision="fp32",
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def run_config():
    return tiny_run_config


def widen_gpt2(model, seed: int, *, wte: float = 0.3, wpe: float = 1.0, other: float = 0.3):
    """Redraw a transformers GPT2LMHeadModel's weights wide (LayerNorm gains around 1), so its
    greedy text varies and its logits differ from token to token; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = {"transformer.wte.weight": wte, "transformer.wpe.weight": wpe}.get(name, other)
            mean = 1.0 if ".ln_" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    return model.eval()


@pytest.fixture(scope="session")
def wide_gpt2():
    return widen_gpt2


class _CodePickle:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture(scope="session")
def write_code_pickle():
    """write(path, key, marker): a .bin whose unpickling would create `marker`."""

    def write(path: Path, key: str, marker: Path) -> None:
        import pickle

        with open(path, "wb") as f:
            pickle.dump({key: _CodePickle(marker)}, f, protocol=2)

    return write
