import copy
import json
import shutil

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.cli import main
from gpt124m.config import get_preset
from gpt124m.loading import load_model
from gpt124m.model import GPT
from gpt124m.sft import lora
from gpt124m.sft.data import Example, SFTBatches, encode_examples
from gpt124m.train.trainer import fit

peft = pytest.importorskip("peft")

TINY = get_preset("tiny")


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY)


def test_trainable_count_is_r_times_in_plus_out_over_the_targets():
    r, d = 4, TINY.n_embd
    model = lora.apply_lora(tiny_gpt(), r=r, alpha=8, dropout=0.0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # per block: c_attn d->3d, attn c_proj d->d, c_fc d->4d, mlp c_proj 4d->d
    per_block = r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    assert sum(p.numel() for p in trainable.values()) == TINY.n_layer * per_block
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    names = lora.target_modules(tiny_gpt(), "default")
    assert len(names) == 4 * TINY.n_layer
    assert lora.target_modules(tiny_gpt(), "all-linear") == names  # the head is never adapted
    assert lora.target_modules(tiny_gpt(), "c_attn") == [
        f"transformer.h.{i}.attn.c_attn" for i in range(TINY.n_layer)
    ]
    with pytest.raises(ValueError, match="matches no linear layer.*c_fc"):
        lora.target_modules(tiny_gpt(), "q_proj")


def test_after_training_steps_only_adapter_weights_changed(tmp_path, run_config):
    model = lora.apply_lora(tiny_gpt(), r=4, alpha=8, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    encoded = encode_examples([Example(f"Say {i}.", "", f"{i} {i}") for i in range(8)])
    batches = SFTBatches(encoded, batch_size=4, seq_len=max(len(e) for e in encoded), seed=0)
    cfg = run_config(
        tmp_path,
        seq_len=batches.seq_len,
        total_batch_tokens=4 * batches.seq_len,
        max_steps=2,
        max_lr=1e-2,
        warmup_steps=0,
        peak_flops=1e12,
    )
    fit(cfg, model, batches)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    adapters = {n for n in before if ".lora_A." in n or ".lora_B." in n}
    assert changed == adapters  # every adapter moved (A from step 2, once B is non-zero)


def adapter_model(seed=0):
    """A LoRA model whose adapters are non-zero, so merging has something to fold in."""
    model = lora.apply_lora(tiny_gpt(seed), r=4, alpha=8, dropout=0.05)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.2)
    return model.eval()


def test_merged_model_equals_adapter_model_and_adapter_round_trips(tmp_path):
    model = adapter_model()
    x = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        reference = model(x)[0]

    adapter_dir = lora.save_adapter(model, tmp_path / "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in adapter_dir.iterdir()
    }
    reloaded = lora.load_adapter(tiny_gpt(), adapter_dir).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x)[0], reference, atol=1e-6)

    merged, diff = lora.merge(copy.deepcopy(model), x)
    assert isinstance(merged, GPT) and diff <= 1e-5
    assert not any("lora" in n for n in merged.state_dict())
    with torch.no_grad():
        assert (merged(x)[0] - reference).abs().max() <= 1e-5
        # the adapters really changed the model
        assert (tiny_gpt()(x)[0] - reference).abs().max() > 1e-2
    save_pretrained(merged, tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "merged")(x)[0], reference, atol=1e-5)


def train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def test_lora_run_resumes_exactly_and_its_merged_model_works_everywhere(
    tmp_path, reverse_data, capsys
):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    # fmt: off
    argv = [
        "sft", "--base", "tiny", "--data", str(reverse_data), "--out", str(out),
        "--method", "lora", "--lora-r", "4", "--max-lr", "1e-2", "--pad-to", "longest",
        "--batch-size", "4", "--micro-batch-size", "2", "--max-steps", "4",
        "--checkpoint-every", "2", "--eval-every", "2", "--sample-every", "0",
        "--peak-flops", "1e12",
    ]
    # fmt: on
    assert main(argv) == 0
    first = train_losses(out)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4

    # lose the last checkpoint, as if the run had been killed after step 2, and resume
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    capsys.readouterr()
    # a resume that would scale the adapters another way is refused in a line
    assert main([*argv, "--resume", "auto", "--lora-alpha", "32"]) == 2
    assert "--lora-alpha 8, not 32: a resumed run keeps" in capsys.readouterr().err
    assert main([*argv, "--resume", "auto"]) == 0
    second = train_losses(out)
    assert sorted(second) == [1, 2, 3, 4] and second == first  # bit for bit on CPU, fp32
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(adapter[k], resumed[k]) for k in adapter)

    # the merged model is a plain model directory: generate, eval and export accept it
    merged = out / "model"
    config = json.loads((merged / "config.json").read_text())
    assert config["format"] == "gpt124m" and config["sft"]["merge_max_abs_logit_diff"] <= 1e-5
    assert config["training"]["method"] == "lora"
    capsys.readouterr()
    assert (
        main(["generate", "--model", str(merged), "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    )
    text = tmp_path / "eval.txt"
    text.write_text("Reverse these words: red,cat,sun\n" * 20)
    # fmt: off
    assert main(["eval", "loss", "--model", str(merged), "--data", str(text), "--seq-len", "32",
                 "--batch-size", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    # fmt: on
    assert main(["export", str(merged), str(tmp_path / "export"), "--format", "gpt2"]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()
