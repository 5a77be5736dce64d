import json
from pathlib import Path

import pytest
import torch

from gpt124m.checkpoint import read_config
from gpt124m.cli import main
from gpt124m.loading import load_model
from gpt124m.sft import data as sft_data
from gpt124m.sft.template import format_prompt
from gpt124m.tokenizer import get_tokenizer

ALPACA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "alpaca_5000.json"


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_tiny_model_learns_the_instruction_set_to_near_zero_loss(trained_reverser, reverse_data):
    out = trained_reverser
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["rows"] == 10 and summary["data"]["train"] == 8
    assert summary["data"]["val"] == 2 and summary["data"]["too_long"] == 0
    assert summary["steps"] == 100  # 50 epochs x 8 examples / batch 4
    val = records(out, "val")
    assert [r["step"] for r in val] == [0, 50, 100] and val[0]["loss"] > 2.0
    assert records(out, "samples")[-1]["texts"][0].startswith("Reverse these words. -> ")
    assert (out / "curves.png").is_file()

    # near-zero loss on every training example, measured on the saved model
    model = load_model(out / "model")
    config = read_config(out / "model")
    assert config["sft"]["template"] == "seed" and config["training"]["method"] == "full"
    data = sft_data.prepare(
        str(reverse_data),
        template="seed",
        max_len=64,
        pad_to="longest",
        val_fraction=0.2,
    )
    x, y = sft_data.make_batch(data.train, data.seq_len)
    with torch.no_grad():
        _, loss = model(x, y)
    assert loss.item() < 0.02


def test_chat_answers_and_stops_at_eos(trained_reverser, train_rows, capsys):
    row = next(r for r in train_rows if "input" in r)
    argv = ["chat", "--model", str(trained_reverser / "model"), "--temperature", "0"]
    assert main([*argv, "--instruction", row["instruction"], "--input", row["input"]]) == 0
    # up to 64 new tokens were allowed: stopping after the answer means the model produced EOS
    assert capsys.readouterr().out == row["output"] + "\n"


def test_real_alpaca_file_trains_and_reports_filter_counts(tmp_path, caplog):
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} not present")
    out = tmp_path / "run"
    # fmt: off
    argv = [
        "sft", "--base", "tiny", "--data", str(ALPACA), "--out", str(out), "--max-steps", "3",
        "--batch-size", "4", "--eval-every", "3", "--val-tokens", "1024", "--sample-every", "0",
        "--checkpoint-every", "0", "--peak-flops", "1e12",
    ]
    # fmt: on
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    # the counts, recomputed here from the raw file
    rows = json.loads(ALPACA.read_text())
    tok = get_tokenizer()
    usable = [r for r in rows if r["output"].strip() and r["instruction"].strip()]
    lengths = [
        len(tok.encode(format_prompt(r["instruction"], r["input"])))
        + len(tok.encode(r["output"].strip()))
        + 1
        for r in usable
    ]
    too_long = sum(n - 1 > 64 for n in lengths)  # n tokens fill n - 1 input positions
    stats = json.loads((out / "summary.json").read_text())["data"]
    assert stats["rows"] == len(rows) and stats["malformed"] == len(rows) - len(usable)
    assert stats["too_long"] == too_long and stats["kept"] == len(usable) - too_long
    assert stats["train"] + stats["val"] == stats["kept"]
    assert stats["val"] == round(0.1 * stats["kept"])
    assert f"{too_long} dropped as longer than 65 tokens" in caplog.text
    assert f"{len(rows) - len(usable)} of {len(rows)} rows malformed" in caplog.text
    assert len(records(out, "train")) == 3 and len(records(out, "val")) == 2
