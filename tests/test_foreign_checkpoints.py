"""No silent wrong answers: untied heads refused, bf16 weights trained in fp32, small vocabularies
padded with their own ids."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt124m.checkpoint import save_pretrained
from gpt124m.config import get_preset
from gpt124m.generate import GenerationConfig, generate
from gpt124m.loading import load_for_training, load_model
from gpt124m.model import GPT
from gpt124m.train.config import TrainConfig
from gpt124m.train.trainer import fit

transformers = pytest.importorskip("transformers")


def test_untied_gpt2_head_is_refused_naming_the_file(tmp_path):
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=32, tie_word_embeddings=False
    )
    model = transformers.GPT2LMHeadModel(config)
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)  # precondition
    model.save_pretrained(tmp_path / "untied")
    with pytest.raises(ValueError, match=r"config.json.*untied output head"):
        load_model(tmp_path / "untied")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt124m",
            "generate",
            "--model",
            str(tmp_path / "untied"),
            "--prompt",
            "Hi",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=120,  # fmt: skip
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "untied" in run.stderr and "Traceback" not in run.stderr


def test_a_head_that_differs_from_wte_is_refused_even_if_the_config_says_tied(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(weights)
    wte = state["transformer.wte.weight"]
    state["lm_head.weight"] = wte + 1.0
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"model.safetensors.*lm_head.weight differs"):
        load_model(tmp_path / "m")


def test_training_from_bf16_weights_keeps_fp32_master_weights(tmp_path, caplog, fixed_batches):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    bf16_dir = save_pretrained(model.to(torch.bfloat16), tmp_path / "bf16", tokenizer_files=False)
    fp32_dir = save_pretrained(model.float(), tmp_path / "fp32", tokenizer_files=False)
    assert load_model(bf16_dir).transformer.wte.weight.dtype == torch.bfloat16  # precondition

    def train(source_dir, name):
        # lr small enough that bf16 weights would round most updates away
        cfg = TrainConfig(
            out_dir=str(tmp_path / name), seq_len=32, micro_batch_size=4,
            total_batch_tokens=128, max_steps=4, warmup_steps=1, max_lr=1e-5, min_lr=1e-6, precision="fp32",
            eval_every=0, sample_every=0, checkpoint_every=4, log_every=1,
        )  # fmt: skip
        with caplog.at_level(logging.INFO, logger="gpt124m"):
            m = load_for_training(source_dir)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        fit(cfg, m, fixed_batches(n_batches=4, seed=1))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(r)["loss"] for r in lines if json.loads(r).get("kind") == "train"]
        return losses, m

    losses_bf16, m_bf16 = train(bf16_dir, "from_bf16")
    assert "bfloat16 weights" in caplog.text and "float32 master weights" in caplog.text
    losses_fp32, m_fp32 = train(fp32_dir, "from_fp32")
    assert losses_bf16 == pytest.approx(losses_fp32, abs=1e-6)
    for a, b in zip(m_bf16.parameters(), m_fp32.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    start = load_model(fp32_dir).transformer.h[0].mlp.c_fc.weight
    assert not torch.equal(m_bf16.transformer.h[0].mlp.c_fc.weight, start)  # it did learn
    final = load_model(tmp_path / "from_bf16" / "checkpoints" / "step_0000004")
    assert final.transformer.wte.weight.dtype == torch.float32


def test_a_saved_model_trains_with_the_dropout_asked_for(tmp_path):
    """`train --model DIR --dropout 0.3` and `sft --base DIR --dropout 0.3` on a model saved
    without dropout: dropout acts in training mode, and the weights are the saved ones."""
    from gpt124m.sft.runner import load_base
    from gpt124m.train.pretrain import initial_model

    torch.manual_seed(0)
    saved = save_pretrained(GPT(get_preset("tiny")), tmp_path / "m")
    idx = torch.randint(0, 50257, (2, 16))
    reference = load_model(saved)(idx)[0]
    for model in (initial_model(TrainConfig(model=str(saved), dropout=0.3)),
                  load_base(str(saved), dropout=0.3)):  # fmt: skip
        model.train()
        assert not torch.equal(model(idx)[0], model(idx)[0])  # dropout acts
        torch.testing.assert_close(model.eval()(idx)[0], reference, rtol=0, atol=0)
    plain = initial_model(TrainConfig(model=str(saved), dropout=0.0)).train()
    assert torch.equal(plain(idx)[0], plain(idx)[0])


@pytest.mark.parametrize("eos", [50256, None])
def test_ragged_batches_on_a_small_vocabulary(eos):
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(get_preset("tiny"), vocab_size=200)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    prompts = [[5, 17, 3, 99, 150], [7], [1, 2]]
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos)
    together = generate(model, prompts, cfg)
    assert together == [generate(model, [p], cfg)[0] for p in prompts]
    assert all(0 <= t < 200 for row in together for t in row)
