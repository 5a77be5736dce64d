import pytest

from gpt124m.checkpoint import load_model, read_config
from gpt124m.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_runs_offline_and_val_loss_falls(tmp_path, capsys):
    out = tmp_path / "qs"
    # fp32 pinned: the recipe's `auto` would pick bf16 only on CPUs that run it natively
    argv = ["quickstart", "--out-dir", str(out), "--max-steps", "12", "--precision", "fp32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "val loss:" in printed and str(out / "model") in printed
    from gpt124m.train.metrics import MetricsLog

    val = [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if r["kind"] == "val"]
    assert len(val) >= 2 and val[-1] < val[0] - 1.0
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "model" / "summary.json").exists()
    # the model directory it leaves is what `gpt124m generate` loads
    model = load_model(out / "model")
    assert model.config.n_layer == 4
    assert read_config(out / "model")["training"]["precision"] == "fp32"
    argv = ["generate", "--model", str(out / "model"), "--prompt", "The", "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "5"]) == 0
    from gpt124m.generate import GenerationConfig, generate_text
    from gpt124m.tokenizer import get_tokenizer

    greedy = generate_text(model, get_tokenizer(), ["The"], GenerationConfig(max_new_tokens=5))[0]
    assert greedy and capsys.readouterr().out == greedy + "\n"
