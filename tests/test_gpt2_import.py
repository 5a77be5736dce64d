"""Hugging Face GPT-2 checkpoints in: same logits and greedy tokens as transformers, offline."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt124m.config import GPT2_VOCAB_SIZE
from gpt124m.generate import GenerationConfig, generate
from gpt124m.loading import load_model, model_config
from gpt124m.model import GPT

transformers = pytest.importorskip("transformers")

N_POSITIONS = 64


@pytest.fixture(scope="module")
def hf_model():
    """A random GPT2LMHeadModel whose every weight (LayerNorms and biases too) is non-trivial."""
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=N_POSITIONS, vocab_size=GPT2_VOCAB_SIZE
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = {"transformer.wte.weight": 0.3, "transformer.wpe.weight": 3.0}.get(name, 0.5)
            mean = 1.0 if ".ln_" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    hf_model.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    return out


def hf_state(hf_model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hf_model.state_dict().items()}


def assert_same_logits(ours: GPT, hf_model, lengths=(1, 7, 33, N_POSITIONS)):
    for T in lengths:
        idx = torch.randint(0, GPT2_VOCAB_SIZE, (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            expected = hf_model(idx).logits
            got, _ = ours(idx)
        assert got.shape == expected.shape == (2, T, GPT2_VOCAB_SIZE)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_logits_equal_transformers(hf_model, hf_dir):
    ours = load_model(hf_dir)
    assert_same_logits(ours, hf_model)
    assert ours.config.vocab_size == GPT2_VOCAB_SIZE
    assert model_config(hf_dir) == ours.config
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_a_half_precision_checkpoint_keeps_its_dtype(hf_model, tmp_path):
    """Like our own directories: an fp16 GPT-2 checkpoint loads (and re-exports) as fp16, not
    silently widened to twice its size; its values are the stored ones."""
    half = tmp_path / "fp16"
    copy.deepcopy(hf_model).half().save_pretrained(half)
    ours = load_model(half)
    assert {p.dtype for p in ours.parameters()} == {torch.float16}
    # fp16 -> fp32 -> fp16 is exact, so this reads the stored values under any transformers
    # version's default dtype (and 4.x has no `dtype=` keyword)
    stored = transformers.GPT2LMHeadModel.from_pretrained(half).half()
    wte = stored.transformer.wte.weight
    assert torch.equal(ours.transformer.wte.weight[: wte.size(0)], wte)
    assert_same_logits(ours.float(), stored.float().eval(), lengths=(7,))


def test_state_dict_names_match_transformers(hf_model, hf_dir):
    ours = load_model(hf_dir).state_dict()
    theirs = hf_model.state_dict()
    assert set(ours) == set(theirs)
    for key, tensor in theirs.items():
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tensor = tensor.t()  # Conv1D stores [in, out]
        if key in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(ours[key][:GPT2_VOCAB_SIZE], tensor)
        else:
            assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_32_tokens_identical_to_transformers(hf_model, hf_dir, penalty):
    ours = load_model(hf_dir)
    prompts = [[464, 2068, 7586, 21831], [15496, 11, 995]][: 2 if penalty == 1.0 else 1]
    cfg = GenerationConfig(max_new_tokens=32, eos_token_id=None, repetition_penalty=penalty)
    got = generate(ours, prompts, cfg)
    for prompt, row in zip(prompts, got, strict=True):
        out = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            repetition_penalty=penalty,
            pad_token_id=GPT2_VOCAB_SIZE - 1,
        )
        expected = out[0, len(prompt) :].tolist()
        assert row == expected
        assert len(set(expected)) > 5  # precondition: not one repeated token


def test_padding_rows_never_leave_the_model(hf_dir):
    """Padding rows made the most attractive of all change no logit, loss or generated token."""
    model = load_model(hf_dir)
    assert model.transformer.wte.weight.shape[0] == model.config.padded_vocab_size == 50304
    idx = torch.tensor([[464, 318, 257], [15496, 11, 995]])
    prompts = [[464], [15496, 11, 995]]
    configs = (
        GenerationConfig(max_new_tokens=8, eos_token_id=None),
        GenerationConfig(max_new_tokens=8, eos_token_id=None, do_sample=True, temperature=50.0),
        GenerationConfig(max_new_tokens=8, do_sample=True, top_k=200, top_p=0.99, seed=2),
    )

    def observe():
        with torch.no_grad():
            logits, loss = model(idx, idx.roll(-1, 1))
        seeded = [GenerationConfig(**{**c.__dict__, "seed": 7}) for c in configs]
        return logits, loss, [generate(model, prompts, c) for c in seeded]

    before = observe()
    with torch.no_grad():
        ln_f = model.transformer.ln_f
        direction = ln_f.bias / ln_f.bias.norm()
        model.transformer.wte.weight[GPT2_VOCAB_SIZE:] = 1000 * direction
        raw = model.lm_head(ln_f(torch.zeros(1, model.config.n_embd)))
    assert raw.argmax(-1).item() >= GPT2_VOCAB_SIZE  # precondition: a padding row would win
    after = observe()
    assert before[0].shape[-1] == GPT2_VOCAB_SIZE
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[2] == after[2]


def test_hub_layout_without_transformer_prefix(hf_model, hf_dir, tmp_path):
    """Hub checkpoints (GPT2Model layout): no `transformer.` prefix, no lm_head, mask buffers."""
    out = tmp_path / "hub"
    out.mkdir()
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    state = {
        k.removeprefix("transformer."): v
        for k, v in hf_state(hf_model).items()
        if k != "lm_head.weight"
    }
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, N_POSITIONS, N_POSITIONS))
    save_file(state, out / "model.safetensors")
    assert_same_logits(load_model(out), hf_model, lengths=(5, N_POSITIONS))


def test_legacy_pytorch_model_bin(hf_model, hf_dir, tmp_path):
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    state = hf_state(hf_model)
    for i in range(hf_model.config.n_layer):
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, out / "pytorch_model.bin")
    assert_same_logits(load_model(out), hf_model, lengths=(9,))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_legacy_bin_with_code_is_refused(hf_dir, tmp_path):
    out = tmp_path / "evil"
    out.mkdir()
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    marker = tmp_path / "marker"
    with open(out / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_model(out)
    assert not marker.exists()


def test_missing_weights_and_unsupported_variants(hf_dir, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_model(out)
    for key, value in [
        ("activation_function", "relu"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("n_inner", 100),
        ("layer_norm_epsilon", 1e-6),
    ]:
        (out / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=f"config.json.*{key}"):
            model_config(out)


def test_hub_id_goes_through_snapshot_download(hf_model, hf_dir, monkeypatch):
    import huggingface_hub

    seen = []

    def fake(repo_id, allow_patterns=None, **kwargs):
        seen.append(repo_id)
        return str(hf_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert_same_logits(load_model("openai-community/gpt2"), hf_model, lengths=(3,))
    assert seen == ["openai-community/gpt2"]
