"""What an SFT run says and leaves, through the real commands: the log names what sized the run,
validation on a short run stays cheap, and the exported card says what the run was, with no
local absolute paths and the seed written as a seed."""

from __future__ import annotations

import logging
import re

import pytest
import yaml

from gpt124m.cli import main
from gpt124m.sft import data as sft_data

pytest.importorskip("peft")


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match
    return yaml.safe_load(match.group(1)), match.group(2)


@pytest.fixture
def val_spy(monkeypatch):
    """Every validation batch the run reads: (examples, width, longest example's input)."""
    seen = []
    real = sft_data.padded_validation_batches

    def spy(examples, **kw):
        for x, y in real(examples, **kw):
            seen.append((x.shape[0], x.shape[1]))
            yield x, y

    monkeypatch.setattr(sft_data, "padded_validation_batches", spy)
    return seen


def sft(tiny_base, reverse_data, out, *extra):
    # fmt: off
    return main([
        "sft", "--base", str(tiny_base), "--data", str(reverse_data), "--out", str(out),
        "--batch-size", "2", "--val-fraction", "0.5", "--sample-every", "0",
        "--peak-flops", "1e12", *extra,
    ])
    # fmt: on


def test_lora_run_logs_its_step_source_validates_cheaply_and_its_card_says_lora(
    tmp_path, tiny_base, reverse_data, val_spy, caplog
):
    out = tmp_path / "lora"
    with caplog.at_level(logging.INFO, logger="gpt124m.sft"):
        assert sft(tiny_base, reverse_data, out, "--method", "lora", "--max-steps", "2") == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "5 examples, 2 steps (--max-steps; 0.8 epochs of batch 2)" in said
    assert "epochs x" not in said
    assert "validation: 2 of 5 examples per evaluation" in said
    # two evaluations (steps 0 and 2), one batch of 2 each, cut to the longest example (< 64)
    assert len(val_spy) == 2 and all(n == 2 and width < 64 for n, width in val_spy)
    assert sum(n * width for n, width in val_spy) < 2 * 2 * 64 / 2  # half the tokens trained
    # 2 steps of 2 examples x 64 tokens; a third of that, shared by the evaluations at 0 and 2
    budget = 2 * 2 * 64 // (3 * 2)
    assert f"(budget {budget} tokens, scaled down to this short run" in said

    assert main(["export", str(out / "model"), str(tmp_path / "export"),
                 "--repo-id", "alice/reverser"]) == 0  # fmt: skip
    card = (tmp_path / "export" / "README.md").read_text()
    meta, body = split_card(card)
    assert meta["co2_eq_emissions"]["training_type"] == "fine-tuning"
    assert "Run type: LoRA fine-tuning (r 8, alpha 8), merged into the base." in body
    assert "fine-tuned from the local model `.../" in body
    assert str(tmp_path) not in card and str(tiny_base.parent) not in card
    assert "| `seed` | 1337 |" in body and "| `split_seed` | 0 |" in body
    assert "| `out_dir` | .../" in body  # the last parts only
    assert f"| `val_tokens` | {budget} |" in body  # the budget the run used, resolved


def test_full_run_sized_by_epochs_says_so(tmp_path, tiny_base, reverse_data, caplog):
    out = tmp_path / "full"
    with caplog.at_level(logging.INFO, logger="gpt124m.sft"):
        assert sft(tiny_base, reverse_data, out, "--epochs", "1") == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 epochs x 5 examples / batch 2 -> 3 steps" in said
    assert main(["export", str(out / "model"), str(tmp_path / "export")]) == 0
    meta, body = split_card((tmp_path / "export" / "README.md").read_text())
    assert meta["co2_eq_emissions"]["training_type"] == "fine-tuning"
    assert "Run type: full fine-tuning." in body
