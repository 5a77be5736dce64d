"""The seed's published format (`samkeet/GPT_124M`, `custom_gpt`) loads through every --model.

The checkpoint is built offline exactly as the seed's remote code wrote it: a plain state dict
in `pytorch_model.bin` with our names under `model.`, nn.Linear layout, the head tied to `wte`
and all 50,304 rows trained. Its weights come from a random transformers GPT-2, so its greedy
output is known from transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt124m.generate import GenerationConfig, generate
from gpt124m.loading import load_model, model_config
from gpt124m.tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
PROMPT = "The river"


@pytest.fixture(scope="module")
def hf_model(wide_gpt2):
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    torch.manual_seed(0)
    return wide_gpt2(transformers.GPT2LMHeadModel(config), seed=4, wpe=2.0, other=0.5)


def write_seed_dir(hf_model, out: Path) -> Path:
    out.mkdir(parents=True)
    state = {}
    for key, tensor in hf_model.state_dict().items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue
        if key.endswith(CONV1D):
            tensor = tensor.t()
        state["model." + key] = tensor.contiguous().clone()
    wte = state["model.transformer.wte.weight"]
    trained_pad = torch.randn(
        50304 - 50257, wte.size(1), generator=torch.Generator().manual_seed(9)
    )
    state["model.transformer.wte.weight"] = torch.cat([wte, trained_pad])
    state["model.lm_head.weight"] = state["model.transformer.wte.weight"]
    torch.save(state, out / "pytorch_model.bin")
    config = {
        "model_type": "custom_gpt",
        "architectures": ["GPTModelForTextGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_gpt.GPTConfig",
            "AutoModelForCausalLM": "modeling_gpt.GPTModelForTextGeneration",
        },
        "block_size": 64,
        "vocab_size": 50304,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def seed_dir(hf_model, tmp_path_factory):
    return write_seed_dir(hf_model, tmp_path_factory.mktemp("seed") / "GPT_124M")


def hf_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    out = hf_model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=50256,
    )
    return out[0, len(ids) :].tolist()


def test_loads_with_transformers_logits_and_greedy_tokens(hf_model, seed_dir):
    ours = load_model(seed_dir)
    assert ours.config.vocab_size == 50257 and ours.config.padded_vocab_size == 50304
    assert model_config(seed_dir) == ours.config
    assert ours.lm_head.weight is ours.transformer.wte.weight
    x = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf_model(x).logits, atol=1e-4, rtol=0)
    prompt = get_tokenizer().encode(PROMPT)
    expected = hf_greedy(hf_model, prompt, 24)
    assert len(set(expected)) > 5
    cfg = GenerationConfig(max_new_tokens=24, eos_token_id=None)
    assert generate(ours, [prompt], cfg)[0] == expected


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gpt124m", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_every_model_flag_takes_it(hf_model, seed_dir, tmp_path):
    tok = get_tokenizer()
    expected = tok.decode(hf_greedy(hf_model, tok.encode(PROMPT), 12))
    run = run_cli("generate", "--model", seed_dir, "--prompt", PROMPT, "--temperature", "0",
                  "--max-new-tokens", "12")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert expected.strip() and expected in run.stdout

    run = run_cli("info", "--model", seed_dir)
    assert run.returncode == 0, run.stderr
    assert "50,304" in run.stdout

    (tmp_path / "t.txt").write_text("A small text about rivers and hills. " * 30)
    run = run_cli("eval", "loss", "--model", seed_dir, "--data", tmp_path / "t.txt",
                  "--seq-len", "32", "--batch-size", "2")  # fmt: skip
    assert run.returncode == 0, run.stderr

    run = run_cli("export", seed_dir, tmp_path / "exported", "--format", "gpt2")
    assert run.returncode == 0, run.stderr
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    x = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, hf_model(x).logits, atol=1e-4, rtol=0)


def test_hub_id_downloads_the_bin(hf_model, seed_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        return str(seed_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert load_model("samkeet/GPT_124M").config.padded_vocab_size == 50304
    assert any("pytorch_model.bin" in (p or []) for p in calls)


def test_a_pickle_with_code_is_refused_in_one_line(seed_dir, tmp_path, write_code_pickle):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((seed_dir / "config.json").read_text())
    marker = tmp_path / "marker"
    write_code_pickle(evil / "pytorch_model.bin", "model.x", marker)
    run = run_cli("generate", "--model", evil, "--prompt", "x")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "pytorch_model.bin" in lines[0] and "Traceback" not in run.stderr
    assert not marker.exists()


def test_keys_without_the_prefix_are_not_the_seed_layout(seed_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((seed_dir / "config.json").read_text())
    state = torch.load(seed_dir / "pytorch_model.bin", weights_only=True)
    torch.save({k.removeprefix("model."): v for k, v in state.items()}, bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin.*custom_gpt layout"):
        load_model(bad)
