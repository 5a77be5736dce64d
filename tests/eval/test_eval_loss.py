import dataclasses
import json
import math
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt124m.cli import main
from gpt124m.data import shards as fmt
from gpt124m.data.loader import token_batches
from gpt124m.eval.loss import evaluate_loss, gpt2_token_bytes
from gpt124m.tokenizer import get_tokenizer


def test_loss_is_evaluated_without_dropout(model):
    """Heavy dropout in training mode: the same loss as the weights in eval mode, every call."""
    from gpt124m.model import GPT

    noisy = GPT(dataclasses.replace(model.config, dropout=0.5))
    noisy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [tuple(torch.randint(0, 50257, (2, 32), generator=g) for _ in "xy")]
    expected = evaluate_loss(model.eval(), batches, device="cpu")["loss"]
    noisy.train()
    assert evaluate_loss(noisy, batches, device="cpu")["loss"] == expected
    assert evaluate_loss(noisy, batches, device="cpu")["loss"] == expected
    assert noisy.training


def test_loss_is_the_token_weighted_mean_over_batches(model):
    g = torch.Generator().manual_seed(1)
    batches = []
    for n_rows, ignored in ((2, 0), (3, 10), (1, 31)):  # batches with different valid counts
        x = torch.randint(0, 50257, (n_rows, 32), generator=g)
        y = torch.randint(0, 50257, (n_rows, 32), generator=g)
        y[0, :ignored] = -100
        batches.append((x, y))
    model.train()
    result = evaluate_loss(model, batches, device="cpu")
    assert model.training  # restored
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            logits, _ = model(x)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum")
            count += int((y != -100).sum())
    assert result["tokens"] == count == 2 * 32 + 3 * 32 - 10 + 32 - 31
    assert result["loss"] == pytest.approx(total.item() / count, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert "bpb" not in result
    with pytest.raises(ValueError, match="no tokens"):
        evaluate_loss(model, [], device="cpu")


def test_token_bytes_count_the_decoded_utf8_bytes():
    tok = get_tokenizer()
    text = "Héllo, wörld! 日本語のテキスト 🙂 and plain ASCII.<|endoftext|>Next doc."
    ids = tok.encode(text, allow_special=True)
    table = gpt2_token_bytes()
    assert int(table[ids].sum()) == len(tok.decode(ids).encode("utf-8")) == len(text.encode())
    assert int(table[tok.eot_id]) == len(b"<|endoftext|>")
    assert table.numel() == tok.n_vocab  # one entry per id a model can predict


def bits_per_byte_reference(model, tokens, batch_size, seq_len, max_tokens):
    tok = get_tokenizer()
    losses, targets = [], []
    with torch.no_grad():
        for x, y in token_batches(
            tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens
        ):
            logits, _ = model(x)
            losses.append(
                F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum")
            )
            targets.extend(y.flatten().tolist())
    n_bytes = len(tok.decode(targets).encode("utf-8"))
    loss_sum = sum(losses).item()
    return loss_sum / len(targets), loss_sum / math.log(2) / n_bytes, n_bytes


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("It was the best of times, it was the wörst of times. " * 60, encoding="utf-8")
    return path


def test_cli_loss_on_a_text_file(tmp_path, model_dir, text_file, capsys):
    from gpt124m.loading import load_model

    argv = ["eval", "loss", "--model", str(model_dir), "--data", str(text_file)]
    argv += ["--tokens", "512", "--batch-size", "2", "--seq-len", "32", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "loss.json").read_text())
    tokens = np.array(get_tokenizer().encode(text_file.read_text(encoding="utf-8")))
    loss, bpb, n_bytes = bits_per_byte_reference(load_model(model_dir), tokens, 2, 32, 512)
    assert result["tokens"] == 512 and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["bpb"] == pytest.approx(bpb, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    out = capsys.readouterr().out
    assert f"loss {result['loss']:.4f}" in out and f"bits/byte {result['bpb']:.4f}" in out


def test_cli_loss_shows_progress_unless_asked_not_to(tmp_path, model_dir, text_file, capsys):
    """It was silent for the whole evaluation (82 s for 32k tokens of a 124M model on CPU; the
    README's 10M-token example would run for hours without a word): a bar on stderr counts the
    tokens scored against the budget, as `prepare`'s does; `--no-progress` hides it."""
    argv = ["eval", "loss", "--model", str(model_dir), "--data", str(text_file), "--tokens", "512"]
    argv += ["--batch-size", "2", "--seq-len", "32", "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "eval loss: 100%" in captured.err and "512/512" in captured.err
    assert "tok/s" in captured.err and "eval loss:" not in captured.out
    assert main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "eval loss:" not in captured.err and captured.out.startswith("loss ")


def test_cli_loss_in_fp32_scores_a_bf16_model_in_fp32(tmp_path, text_file):
    """A model stored in bf16, `--precision fp32`: its weights are widened, as the flag says, not
    left to compute in bf16 (which moves the loss by about 3e-5 here)."""
    from gpt124m.checkpoint import save_pretrained
    from gpt124m.loading import load_model

    from .conftest import lively_tiny_model

    stored = save_pretrained(lively_tiny_model().to(torch.bfloat16), tmp_path / "bf16")
    argv = ["eval", "loss", "--model", str(stored), "--data", str(text_file), "--tokens", "512"]
    argv += ["--batch-size", "2", "--seq-len", "32", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "loss.json").read_text())
    tokens = np.array(get_tokenizer().encode(text_file.read_text(encoding="utf-8")))
    widened = load_model(stored, dtype=torch.float32)
    loss, bpb, _ = bits_per_byte_reference(widened, tokens, 2, 32, 512)
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["bpb"] == pytest.approx(bpb, rel=1e-6)


@pytest.fixture
def shard_dir(tmp_path, text_file):
    """A prepared directory whose val split holds the text file's tokens (two shards)."""
    tokens = np.array(get_tokenizer().encode(text_file.read_text(encoding="utf-8")), np.uint16)
    d = tmp_path / "shards"
    d.mkdir()
    entries = []
    splits = (("val", [tokens[:300], tokens[300:]]), ("train", [tokens]))
    for split, arrays in splits:
        for i, arr in enumerate(arrays):
            name = fmt.shard_name(split, i)
            digest = fmt.write_shard(d / name, arr)
            entries.append({"name": name, "split": split, "tokens": len(arr), "sha256": digest})
    manifest = {
        "format": fmt.MANIFEST_FORMAT,
        "format_version": fmt.MANIFEST_FORMAT_VERSION,
        "complete": True,
        "tokenizer": "gpt2",
        "vocab_size": 50257,
        "shards": entries,
    }
    (d / fmt.MANIFEST).write_text(json.dumps(manifest))
    return d


@pytest.mark.slow
def test_cli_loss_on_shards_equals_the_text_file_and_splits_across_ranks(
    tmp_path, model_dir, text_file, shard_dir, torchrun
):
    argv, env = torchrun
    common = ["--model", str(model_dir), "--tokens", "512", "--batch-size", "2"]
    common += ["--seq-len", "32", "--device", "cpu"]
    results = {}
    for name, data in (("text", text_file), ("shards", shard_dir)):
        assert (
            main(["eval", "loss", *common, "--data", str(data), "--out", str(tmp_path / name)]) == 0
        )
        results[name] = json.loads((tmp_path / name / "loss.json").read_text())
    proc = subprocess.run(
        argv(2, "eval", "loss", *common, "--data", str(shard_dir), "--out", str(tmp_path / "ddp")),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results["ddp"] = json.loads((tmp_path / "ddp" / "loss.json").read_text())
    assert results["ddp"]["world_size"] == 2
    for name in ("shards", "ddp"):
        assert results[name]["tokens"] == results["text"]["tokens"] == 512
        assert results[name]["bytes"] == results["text"]["bytes"]
        assert results[name]["loss"] == pytest.approx(results["text"]["loss"], rel=1e-6)


def test_cli_loss_bad_input(tmp_path, model_dir, capsys):
    assert main(["eval", "loss", "--model", str(model_dir), "--data", str(tmp_path / "x")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    args = ["eval", "loss", "--model", str(model_dir), "--data", str(tmp_path)]
    assert main([*args, "--tokens", "0"]) == 2
    assert "--tokens must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["ids", "manifest"])
def test_cli_loss_refuses_damaged_data_in_one_line(tmp_path, model_dir, shard_dir, capsys, damage):
    """A val shard holding ids past the vocabulary ended in `IndexError: index out of range in
    self` (rc 1; on CUDA a device-side assert), `"shards": "x"` in the manifest in a TypeError;
    now one line naming the file (and the field), rc 2."""
    if damage == "ids":
        shard = shard_dir / "val_000001.bin"
        data = bytearray(shard.read_bytes())
        data[fmt.HEADER_SIZE + 20 : fmt.HEADER_SIZE + 24] = b"\xff" * 4
        shard.write_bytes(bytes(data))
        expected = [f"corrupt shard {shard}", "token id 65535 at position 10", "the vocabulary"]
    else:
        path = shard_dir / fmt.MANIFEST
        path.write_text(json.dumps({**json.loads(path.read_text()), "shards": "x"}))
        expected = [f"corrupt manifest {path}: shards must be a list"]
    argv = ["eval", "loss", "--model", str(model_dir), "--data", str(shard_dir), "--seq-len", "32"]
    assert main([*argv, "--device", "cpu", "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpt124m eval: error: "), err
    assert all(text in err[0] for text in expected), err[0]
    assert not (tmp_path / "out").exists()
