import io
import json

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.cli import main
from gpt124m.config import get_preset
from gpt124m.generate import GenerationConfig, generate
from gpt124m.model import GPT
from gpt124m.sft.chat import respond, trained_template
from gpt124m.sft.data import Example, encode_examples
from gpt124m.sft.template import format_prompt
from gpt124m.tokenizer import get_tokenizer

from ..conftest import needs_compiler


def test_interactive_answers_each_line_until_eof(trained_reverser, train_rows, monkeypatch, capsys):
    inline = [r for r in train_rows if "input" not in r][:2]
    lines = [inline[0]["instruction"], "", inline[1]["instruction"]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    argv = ["chat", "--model", str(trained_reverser / "model"), "--temperature", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{inline[0]['output']}\n{inline[1]['output']}\n"


@needs_compiler
def test_compiled_chat_gives_the_same_answers(trained_reverser, train_rows, monkeypatch, capsys):
    """`chat --compile`: several answers through one compiled decode step, each as eager."""
    rows = [r for r in train_rows if "input" not in r][:3]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(r["instruction"] + "\n" for r in rows)))
    argv = ["chat", "--model", str(trained_reverser / "model"), "--temperature", "0", "--compile"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "".join(r["output"] + "\n" for r in rows)


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat") / "model"
    save_pretrained(GPT(get_preset("tiny")), out, metadata={"sft": {"template": "alpaca"}})
    return out


def test_template_defaults_to_the_one_recorded_at_training(untrained_dir):
    config = json.loads((untrained_dir / "config.json").read_text())
    assert trained_template(config) == "alpaca"
    assert trained_template({"model_type": "gpt2"}) == "seed"


def test_response_streams_only_new_text_within_the_block(untrained_dir):
    from gpt124m.loading import load_model

    model, tok = load_model(untrained_dir), get_tokenizer()
    cfg = GenerationConfig(max_new_tokens=1000)  # more than the block holds: capped, no error
    pieces = list(respond(model, tok, "Hi.", template="seed", cfg=cfg))
    text = "".join(pieces)
    assert "### Response" not in text
    prompt_tokens = len(tok.encode("### Instruction:\nHi.\n\n### Response:\n"))
    assert len(tok.encode(text)) <= 64 - prompt_tokens + 1  # the last one is never fed back
    with pytest.raises(ValueError, match="longer than the model's 64-token block"):
        respond(model, tok, "word " * 80, cfg=cfg)
    with pytest.raises(ValueError, match="empty"):
        respond(model, tok, "  ", cfg=cfg)


def test_max_length_counts_the_prompt_as_in_transformers(untrained_dir):
    """`max_length` bounds prompt plus response: with 5 tokens of room after the prompt, the answer
    is the one `max_new_tokens=5` gives, not one that runs to the end of the block."""
    from gpt124m.loading import load_model

    model, tok = load_model(untrained_dir), get_tokenizer()
    n_prompt = len(tok.encode("### Instruction:\nHi.\n\n### Response:\n"))

    def answer(**lengths):
        cfg = GenerationConfig(eos_token_id=None, **lengths)
        return "".join(respond(model, tok, "Hi.", template="seed", cfg=cfg))

    five = answer(max_new_tokens=5)
    assert answer(max_length=n_prompt + 5) == five
    whole = answer()  # neither length: the rest of the block
    assert whole.startswith(five) and len(whole) > len(five)


def test_bad_lines_are_reported_and_the_session_goes_on(untrained_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("word " * 80 + "\nHi.\n"))
    argv = ["chat", "--model", str(untrained_dir), "--max-new-tokens", "3", "--temperature", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "error: the prompt is longer than the model's 64-token block" in captured.err
    assert captured.out.count("\n") == 1  # the second line was still answered


def test_flag_errors(untrained_dir, capsys):
    base = ["chat", "--model", str(untrained_dir)]
    assert main([*base, "--input", "x"]) == 2
    assert "--input needs --instruction" in capsys.readouterr().err
    assert main([*base, "--instruction", "x", "--max-new-tokens", "0"]) == 2
    assert (
        main(["chat", "--model", str(untrained_dir.parent / "missing"), "--instruction", "x"]) == 2
    )


def test_end_of_text_in_an_instruction_is_the_text_sft_trained_on(tiny_model, tok):
    """An instruction is encoded as `gpt124m sft` encoded its examples: `<|endoftext|>` typed in
    one is 7 characters of text, never the token that ends a document (as a bare prompt reads
    it), so the model sees what tuning taught it."""
    instruction = "Say<|endoftext|>hi"
    example = encode_examples([Example(instruction, "", "x")])[0]
    trained = example.tokens[: example.prompt_len].tolist()
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=None)
    expected = tok.decode(generate(tiny_model, [trained], cfg)[0])
    special = tok.encode(format_prompt(instruction), allow_special=True)
    assert special != trained
    assert tok.decode(generate(tiny_model, [special], cfg)[0]) != expected  # precondition
    assert "".join(respond(tiny_model, tok, instruction, cfg=cfg)) == expected
