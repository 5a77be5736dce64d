"""The `gpt124m` command: help, `generate` (stdout carries only the text) and `info`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt124m.cli import HUGE_PAGES_ENV, _command_modules, main
from gpt124m.config import PRESETS, get_preset
from gpt124m.generate import GenerationConfig, generate_text

PROMPT = "The meaning of life is"


def names() -> list[str]:
    return [m.NAME for m in _command_modules()]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert {"generate", "info"} <= set(names())
    for name in names():
        assert name in out


@pytest.mark.parametrize("name", names())
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"usage: gpt124m {name}" in capsys.readouterr().out


def greedy_text(tiny_model, tok, prompt=PROMPT, n=12) -> str:
    return generate_text(tiny_model, tok, [prompt], GenerationConfig(max_new_tokens=n))[0]


def test_generate_greedy_prints_only_the_continuation(tiny_model, tiny_model_dir, tok, capsys):
    argv = ["generate", "--model", str(tiny_model_dir), "--prompt", PROMPT]
    rc = main([*argv, "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0
    expected = greedy_text(tiny_model, tok)
    assert expected.strip()
    assert captured.out == expected + "\n"


def test_generate_reads_the_prompt_from_stdin(tiny_model, tiny_model_dir, tok, capsys, monkeypatch):
    """`echo PROMPT | gpt124m generate` is `--prompt PROMPT`: the line's newline is not part of
    it; inner and earlier newlines are."""
    argv = ["generate", "--model", str(tiny_model_dir), "--temperature", "0"]
    for piped in (PROMPT, PROMPT + "\n", PROMPT + "\r\n"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(piped))
        assert main([*argv, "--max-new-tokens", "12"]) == 0
        assert capsys.readouterr().out == greedy_text(tiny_model, tok) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT + "\n\n"))
    assert main([*argv, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == greedy_text(tiny_model, tok, PROMPT + "\n") + "\n"


def test_generate_sampling_with_seed_and_samples(tiny_model_dir, capsys):
    def samples(*flags) -> list[str]:
        argv = ["generate", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--top-p", "0.9"]
        assert main([*argv, "--max-new-tokens", "8", "--num-samples", "2", *flags]) == 0
        out = capsys.readouterr().out
        assert "--- sample 1 ---" in out and "--- sample 2 ---" in out
        parts = out.removesuffix("\n").split("\n--- sample ")[1:]
        return [part.split(" ---\n", 1)[1] for part in parts]

    first = samples("--seed", "3")
    assert samples("--seed", "3") == first  # a seed makes sampling repeatable
    assert samples("--seed", "11") != first  # and a different seed samples differently
    assert first[0] != first[1]  # each sample draws anew
    (greedy,) = {*samples("--temperature", "0")}  # greedy: both samples alike
    assert greedy not in first


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "1.5"], "--top-p"),
        (["--top-p", "0"], "--top-p"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-k", "-3"], "--top-k"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        # logits / 1e-300 overflowed to inf, then NaN probabilities: a traceback
        (["--temperature", "1e-300"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--repetition-penalty", "1e-300"], "--repetition-penalty"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--max-new-tokens", "500"], "block size"),
        (["--num-samples", "0"], "--num-samples"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--prompt", ""], "--prompt"),
        # as train's --seed; one was accepted, the other failed in torch, naming no flag
        (["--seed", "-1"], "--seed: seed must be in [0, 2**63)"),
        (["--seed", str(2**70)], "--seed: seed must be in [0, 2**63)"),
    ],
)
def test_generate_bad_values_exit_2(tiny_model_dir, capsys, flags, message):
    argv = ["generate", "--model", str(tiny_model_dir), "--prompt", PROMPT]
    assert main([*argv, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "gpt124m generate: error:" in captured.err and message in captured.err


@pytest.mark.parametrize(
    "flags", [["--max-new-tokens", "ten"], ["--precision", "int8"], ["--temperature", "hot"], []]
)
def test_generate_unparsable_flags_exit_2(tiny_model_dir, capsys, flags):
    argv = ["generate", "--model", str(tiny_model_dir)] if flags else ["generate"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *flags])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_generate_missing_model_exits_2(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "nope" in capsys.readouterr().err


def test_info_preset(capsys):
    assert main(["info", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,475,904" in out
    assert "n_layer: 12" in out and "GiB" in out and "AdamW" in out
    assert main(["info", "--preset", "gpt3-175b"]) == 0  # counted, never allocated
    assert f"{get_preset('gpt3-175b').num_params():,}" in capsys.readouterr().out
    assert main(["info", "--preset", "gpt5"]) == 2
    assert "unknown model preset" in capsys.readouterr().err


def test_info_list_and_model(tiny_model, tiny_model_dir, capsys):
    assert main(["info", "--list"]) == 0
    assert main(["info", "--list", "--preset", "gpt2"]) == 2  # one of them
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{tiny_model.num_params():,}" in out and "n_embd: 32" in out


def test_console_script_in_a_subprocess(tiny_model, tiny_model_dir, tok):
    script = Path(sys.executable).with_name("gpt124m")
    if not script.exists():
        pytest.skip("the gpt124m console script is not installed next to this Python")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    help_ = subprocess.run([script, "--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "generate" in help_.stdout
    argv = [script, "generate", "--model", tiny_model_dir, "--prompt", PROMPT]
    argv += ["--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == greedy_text(tiny_model, tok) + "\n"
    assert "loaded" in run.stderr  # the log line went to stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "info", "--preset", "nano"],
        ["info", "--preset", "nano", "-v"],
        ["info", "--verbose", "--preset", "nano"],
        ["eval", "loss", "--model", "nano", "--data", "no-such-dir", "-v"],
    ],
)
def test_verbose_before_or_after_the_subcommand(argv):
    run = subprocess.run(
        [sys.executable, "-m", "gpt124m", *argv], capture_output=True, text=True, timeout=120
    )
    assert run.returncode in (0, 2), run.stderr
    assert f"python {sys.version.split()[0]} | {' '.join(argv)}" in run.stderr  # the debug line


def test_no_debug_line_without_verbose():
    run = subprocess.run(
        [sys.executable, "-m", "gpt124m", "info", "--preset", "nano"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stderr == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "gpt5", "--max-steps", "1"], "gpt5: no such model directory"),
        (["export", "runs/nope", "out/nope"], "runs/nope: no such model directory"),
        (["demo", "--model", "runs/nope"], "runs/nope: no such model directory"),
        (["generate", "--model", "runs/nope", "--prompt", "x"], "runs/nope: no such model"),
    ],
)
def test_unknown_models_fail_in_one_line_without_the_hub(argv, message, tmp_path):
    """`runs/` exists, so `runs/nope` is a local path; `gpt5` is no preset and no owner/name."""
    (tmp_path / "runs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a Hub attempt would fail loudly and slowly
    run = subprocess.run(
        [sys.executable, "-m", "gpt124m", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,  # fmt: skip
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / "out").exists()


# What a 256 MB CPU tensor costs in page faults after `gpt124m info` ran in the same process.
PAGES_PROBE = """
import resource, torch
from gpt124m.cli import main
assert main(["info", "--preset", "nano"]) == 0
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_OF_256_MB = (256 << 20) // 4096
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(
    not (THP.exists() and "[madvise]" in THP.read_text()),
    reason="needs Linux with transparent huge pages on request (madvise)",
)
@pytest.mark.parametrize("chosen", [None, "0"])
def test_the_command_backs_large_cpu_tensors_with_huge_pages_unless_told_not_to(chosen):
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    if chosen is not None:
        env[HUGE_PAGES_ENV] = chosen
    run = subprocess.run(
        [sys.executable, "-c", PAGES_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    faults = int(run.stdout.split()[-1])
    if chosen is None:  # 2 MB pages: 128 faults, not 65,536
        assert faults < PAGES_OF_256_MB // 50
    else:  # the user's choice stands: PyTorch's 4 KB pages
        assert faults > PAGES_OF_256_MB // 2
