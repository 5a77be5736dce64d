"""Presets carry the issue's shapes; counting and describing never allocate weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gpt124m.config import (
    GPT2_VOCAB_SIZE,
    PRESETS,
    ModelConfig,
    describe,
    get_preset,
)
from gpt124m.model import GPT

# (n_layer, n_head, n_embd, block_size) as the issue lists them; 13B and XL are adjusted below.
ISSUE_SHAPES = {
    "gpt2": (12, 12, 768, 1024),
    "gpt2-medium": (24, 16, 1024, 1024),
    "gpt2-large": (36, 20, 1280, 1024),
    "gpt2-xl": (48, 25, 1600, 1024),
    "gpt3-small": (12, 12, 768, 2048),
    "gpt3-medium": (24, 16, 1024, 2048),
    "gpt3-large": (24, 16, 1536, 2048),
    "gpt3-xl": (24, 24, 2048, 2048),
    "gpt3-2.7b": (32, 32, 2560, 2048),
    "gpt3-6.7b": (32, 32, 4096, 2048),
    "gpt3-13b": (40, 40, 5140, 2048),
    "gpt3-175b": (96, 96, 12288, 2048),
}


def meta_param_count(config: ModelConfig) -> int:
    with torch.device("meta"):
        return GPT(config).num_params()


def test_vocab_is_gpt2s_and_its_rows_the_next_multiple_of_64():
    config = ModelConfig()
    assert config.vocab_size == GPT2_VOCAB_SIZE == 50257
    assert config.padded_vocab_size == 50304
    assert ModelConfig(vocab_size=64).padded_vocab_size == 64
    assert ModelConfig(vocab_size=65).padded_vocab_size == 128
    assert ModelConfig(vocab_size=100, vocab_multiple=1).padded_vocab_size == 100


def test_gpt2_has_exactly_124_475_904_parameters():
    config = get_preset("gpt2")
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (12, 12, 768, 1024)
    assert (config.vocab_size, config.padded_vocab_size) == (50257, 50304)
    assert config.num_params() == 124_475_904
    assert meta_param_count(config) == 124_475_904


@pytest.mark.parametrize("name", ISSUE_SHAPES)
def test_preset_shapes_match_the_issue(name):
    config = get_preset(name)
    n_layer, n_head, n_embd, block = ISSUE_SHAPES[name]
    assert config.n_layer == n_layer
    assert config.block_size == block
    assert config.vocab_size == GPT2_VOCAB_SIZE
    assert config.n_embd % config.n_head == 0
    if n_embd % n_head == 0:
        assert (config.n_head, config.n_embd) == (n_head, n_embd)
    if name.startswith("gpt3"):
        assert "dense" in PRESETS[name].description.lower()


def test_indivisible_gpt3_shapes_are_adjusted_and_documented():
    xl, xl_doc = get_preset("gpt3-xl"), PRESETS["gpt3-xl"].description
    assert (xl.n_embd, xl.n_head, xl.head_dim) == (2048, 16, 128)  # the paper's d_head is 128
    assert "24 heads" in xl_doc and "16 heads" in xl_doc
    b13, b13_doc = get_preset("gpt3-13b"), PRESETS["gpt3-13b"].description
    assert (b13.n_embd, b13.n_head) == (5120, 40)
    assert "5140" in b13_doc and "5120" in b13_doc


@pytest.mark.parametrize("name", ["gpt2-xl", "gpt3-13b", "gpt3-175b"])
def test_huge_presets_count_on_meta_device(name):
    config = get_preset(name)
    assert config.num_params() == meta_param_count(config)
    embeddings = (config.padded_vocab_size + config.block_size) * config.n_embd
    assert config.num_params(include_embeddings=False) == config.num_params() - embeddings


def test_tiny_presets_are_small():
    assert get_preset("tiny").num_params() < 2_000_000
    assert get_preset("nano").num_params() < get_preset("gpt2").num_params()


def test_describe_and_count_need_no_torch():
    code = (
        "import sys; from gpt124m.config import describe, get_preset; "
        "print(describe(get_preset('gpt3-175b'))); assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{get_preset('gpt3-175b').num_params():,}" in out.stdout


def test_memory_figures():
    config = get_preset("gpt2")
    mem = config.memory_bytes()
    n = config.num_params()
    assert mem == {"fp32_weights": 4 * n, "bf16_weights": 2 * n, "adamw_training_fp32": 16 * n}
    text = describe(config)
    assert "124,475,904" in text
    assert f"{4 * n / 2**30:,.2f} GiB" in text and f"{16 * n / 2**30:,.2f} GiB" in text


def test_config_round_trip_and_validation():
    config = get_preset("nano")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_embd .* n_head"):
        ModelConfig(n_head=5, n_embd=768)
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig(n_layer=0)
    with pytest.raises(ValueError, match="n_layer must be a positive integer, got True"):
        ModelConfig(n_layer=True)  # a config.json's `true` was taken as one layer
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'.*gpt2"):
        get_preset("gpt5")
