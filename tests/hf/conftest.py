"""Shared fixtures for the Hugging Face export tests: a tiny model directory and its exports.

transformers copies remote code into HF_MODULES_CACHE, a path it reads once at import. `hf_env`
points it (and HF_HOME) at a temporary folder, forces offline mode, and so keeps the tests away
from the network and from the user's cache. `no_network` makes any socket connection fail.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import struct
import sys
import zlib
from pathlib import Path

import pytest

from gpt124m.checkpoint import save_pretrained
from gpt124m.model import GPT

from ..conftest import lively_tiny_model

TRAINING = {
    "preset": "tiny",
    "dataset": "HuggingFaceFW/fineweb-edu",
    "max_lr": 6e-4,
    "batch_tokens": 524288,
    "schedule": {"warmup_steps": 715, "decay": "cosine"},
}
RESULTS = {"val_loss": 3.2845, "hellaswag": {"acc_norm": 0.2967, "n": 10042}}
SUMMARY = {
    "tokens_seen": 10_000_000_000,
    "wall_time_s": 7200.0,
    "device": "8x NVIDIA H100 80GB",
    "device_hours": 16.0,
    "energy_kwh": 11.2,
    "co2_kg": 4.48,
    "power_w": 700,
    "grid_gco2_per_kwh": 400,
}


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG, standing in for the trainer's plots."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def native_model() -> GPT:
    """Wide random weights (tests/conftest.py): greedy text that varies with its context, so a
    generation test compares real choices, not one token repeated."""
    return lively_tiny_model()


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory, native_model) -> Path:
    """A model directory as the trainer leaves it: weights, metadata, summary and plots."""
    out = tmp_path_factory.mktemp("native") / "model"
    save_pretrained(native_model, out, metadata={"training": TRAINING, "results": RESULTS})
    (out / "summary.json").write_text(json.dumps(SUMMARY))
    (out / "curves.png").write_bytes(tiny_png())
    (out / "hellaswag.png").write_bytes(tiny_png())
    return out


REMOTE_REPO = "alice/gpt124m-tiny"
GPT2_REPO = "alice/gpt124m-tiny-gpt2"


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


def publish_to_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out in HF_HOME's hub cache as if downloaded from `repo_id` (for offline use)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="session")
def remote_dir(tmp_path_factory, native_dir, hf_home) -> Path:
    """The remote-code export, also published (offline) as the hub repo its card names."""
    from gpt124m.hf.export import export

    out = export(native_dir, tmp_path_factory.mktemp("export") / "remote", repo_id=REMOTE_REPO)
    publish_to_cache(hf_home, REMOTE_REPO, out)
    return out


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, native_dir, hf_home) -> Path:
    from gpt124m.hf.export import export

    out = tmp_path_factory.mktemp("export") / "gpt2"
    out = export(native_dir, out, fmt="gpt2", repo_id=GPT2_REPO)
    publish_to_cache(hf_home, GPT2_REPO, out)
    return out


@pytest.fixture
def offline_hub(hf_home, monkeypatch) -> Path:
    """Point huggingface_hub at the test cache, offline, for hub ids in this process."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return hf_home / "hub"


@pytest.fixture(scope="module")
def hf_env(hf_home):
    """Import transformers with HF_HOME and HF_MODULES_CACHE in a temp folder, offline."""
    modules = hf_home / "modules"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(hf_home))
        mp.setenv("HF_MODULES_CACHE", str(modules))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        transformers = pytest.importorskip("transformers")
        # If another test imported transformers first, its constants predate these variables.
        import huggingface_hub.constants as hub_constants
        from transformers import dynamic_module_utils

        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(modules))
        package = sys.modules.get("transformers_modules")
        if package is not None:
            mp.setattr(
                package, "__path__", [str(modules / "transformers_modules"), *package.__path__]
            )
        yield transformers


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(self, address, *args, **kwargs):
        raise RuntimeError(f"test tried to open a network connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="session")
def run_record() -> dict:
    """What the trainer recorded for the fixture model (config.json metadata and summary)."""
    return {"training": TRAINING, "results": RESULTS, "summary": SUMMARY}


@pytest.fixture(scope="session")
def repo_ids() -> dict[str, str]:
    """The hub ids the exports' cards name, and under which the offline cache holds them."""
    return {"remote_dir": REMOTE_REPO, "gpt2_dir": GPT2_REPO}
