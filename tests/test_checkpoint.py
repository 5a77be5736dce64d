"""Model directories: exact round trip, clear errors naming the file, nothing ever unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gpt124m.checkpoint as checkpoint
from gpt124m.atomic import atomic_path, atomic_write_text
from gpt124m.checkpoint import read_config, save_pretrained
from gpt124m.config import get_preset
from gpt124m.loading import load_model, model_config
from gpt124m.model import GPT


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_round_trip_is_exact(tiny_model, tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = read_config(tiny_model_dir)
    assert config["format"] == "gpt124m" and config["format_version"] == 2
    assert config["model"] == get_preset("tiny").to_dict()
    assert "lm_head.weight" not in load_file(tiny_model_dir / "model.safetensors")  # tied

    loaded = load_model(tiny_model_dir)
    assert not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ours, theirs = tiny_model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert model_config(tiny_model_dir) == tiny_model.config


def test_version_1_directories_still_load(tiny_model, tiny_model_dir, tmp_path):
    """Version 1 stored the padded row count as vocab_size: same weights, same greedy text."""
    from gpt124m.generate import GenerationConfig, generate

    old = copy_dir(tiny_model_dir, tmp_path / "v1")
    config = read_config(old)
    model = dict(config["model"], vocab_size=50304)
    del model["vocab_multiple"]
    (old / "config.json").write_text(json.dumps({**config, "format_version": 1, "model": model}))
    loaded = load_model(old)
    assert loaded.config == tiny_model.config
    cfg = GenerationConfig(max_new_tokens=12, eos_token_id=None)
    assert generate(loaded, [[464, 318]], cfg) == generate(tiny_model, [[464, 318]], cfg)


def test_metadata_and_loading_in_another_dtype(tiny_model, tmp_path):
    out = save_pretrained(tiny_model, tmp_path / "m", metadata={"step": 7}, tokenizer_files=False)
    assert read_config(out)["step"] == 7
    with pytest.raises(ValueError, match="model"):
        save_pretrained(tiny_model, tmp_path / "x", metadata={"model": {}})
    with pytest.raises(ValueError, match="tokenizer"):  # the file names its tokenizer, not a run
        save_pretrained(tiny_model, tmp_path / "y", metadata={"tokenizer": "llama"})
    assert not (out / "vocab.json").exists()
    loaded = load_model(out, dtype=torch.bfloat16)
    assert loaded.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(
        loaded.transformer.h[0].attn.c_attn.weight.float(),
        tiny_model.transformer.h[0].attn.c_attn.weight.bfloat16().float(),
    )


def test_missing_config(tiny_model_dir, tmp_path):
    model_dir = copy_dir(tiny_model_dir, tmp_path / "m")
    (model_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(model_dir)


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage"])
def test_damaged_weights_name_the_file(tiny_model_dir, tmp_path, damage):
    model_dir = copy_dir(tiny_model_dir, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes(b"\x00" * 64 + data[64:])
    with pytest.raises((FileNotFoundError, ValueError), match="model.safetensors"):
        load_model(model_dir)


def test_bad_config_names_the_file(tiny_model_dir, tmp_path):
    model_dir = copy_dir(tiny_model_dir, tmp_path / "m")
    path = model_dir / "config.json"
    good = json.loads(path.read_text())
    for payload, message in [
        ("{not json", "not valid JSON"),
        (json.dumps({**good, "format_version": 99}), "format_version"),
        (json.dumps({**good, "model": {**good["model"], "n_head": 3}}), "bad model config"),
        (json.dumps({"model_type": "llama"}), "unrecognised"),
        ("[]", "expected a JSON object, got list"),
        ("\udcff", "not valid JSON"),  # not UTF-8
    ]:
        path.write_bytes(payload.encode("utf-8", errors="surrogateescape"))
        with pytest.raises(ValueError, match=message) as err:
            load_model(model_dir)
        assert "config.json" in str(err.value)


def test_mismatched_weights_name_the_file(tiny_model_dir, tmp_path):
    model_dir = copy_dir(tiny_model_dir, tmp_path / "m")
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["model"]["n_embd"] = 64  # weights are 32 wide
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: the config's n_embd is 64, but "):
        load_model(model_dir)
    config["model"]["n_embd"] = 32
    config["model"]["vocab_size"] = 1000  # 1,024 embedding rows; the weights hold 50,304
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors.*wrong shape"):
        load_model(model_dir)

    model_dir = copy_dir(tiny_model_dir, tmp_path / "m2")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    tensors["transformer.extra"] = torch.zeros(1)
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors.*missing: transformer.h.1.mlp.c_fc"):
        load_model(model_dir)


def test_loading_never_unpickles(tiny_model_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert isinstance(load_model(tiny_model_dir), GPT)


def test_sources_resolve_to_directories_or_hub_ids(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="file.bin"):
        load_model(tmp_path / "file.bin")

    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert isinstance(load_model("alice/tiny-v1.5"), GPT)
    assert calls[-1][0] == "alice/tiny-v1.5" and "*.safetensors" in calls[-1][1]
    assert model_config("alice/tiny") == get_preset("tiny")
    assert calls[-1] == ("alice/tiny", ["config.json"])  # describing downloads no weights

    def offline(repo_id, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="alice/nothing.*Hugging Face Hub.*offline"):
        load_model("alice/nothing")


def test_local_looking_sources_and_bare_names_never_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub must not be tried")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for source, message in [
        ("runs/nope", "runs/nope: no such model directory$"),
        ("./nope/model", "no such model directory$"),
        ("gpt5", "gpt5: no such model directory, and not a hub id"),
        ("nano", "nano: is a preset"),
    ]:
        with pytest.raises(FileNotFoundError, match=message) as info:
            load_model(source)
        assert "\n" not in str(info.value)


def test_writes_are_atomic(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["out.txt"]

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(tiny_model, tmp_path / "model")
    assert list((tmp_path / "model").iterdir()) == []


def test_atomic_files_get_ordinary_permissions(tmp_path, tiny_model):
    """mkstemp makes 0600 files; a written model must be readable as if made by open()."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        out = save_pretrained(tiny_model, tmp_path / "model")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
