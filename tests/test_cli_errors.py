"""Bad input to `train`, `sft` and `quickstart`, through the real command (`python -m gpt124m`):
one line on stderr naming the problem, exit code 2, no traceback, and the output directory
(which already holds a previous run's file) left exactly as it was. And a wrong flag value to any
command is answered before torch is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt124m.cli import main
from gpt124m.data.prepare import PrepareConfig, prepare

from .conftest import snapshot

SENTINEL = "previous run's results\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    """Good inputs to break one at a time: token shards, an Alpaca file, a model directory."""
    root = tmp_path_factory.mktemp("inputs")
    docs = root / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"doc{i}.txt").write_text(" ".join(f"word{(i * 5 + j) % 31}" for j in range(200)))
    prepare(
        PrepareConfig(
            source=str(docs), out_dir=str(root / "shards"), shard_tokens=2000, val_tokens=500
        )
    )
    (root / "empty").mkdir()
    shutil.copytree(root / "shards", root / "damaged")  # a shard edited after prepare wrote it
    damaged = root / "damaged" / "train_000000.bin"
    damaged.write_bytes(damaged.read_bytes()[:-2] + b"\xff\xff")
    alpaca = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(6)]
    (root / "alpaca.json").write_text(json.dumps(alpaca))
    qa = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "Hi?", "answer": "Hello."}]
    (root / "qa.json").write_text(json.dumps(qa))
    (root / "a_file.txt").write_text("not a directory\n")
    return {"root": root, "model": tiny_model_dir}


def fails_cleanly(tmp_path: Path, argv: list[str], *expected: str, previous=("metrics.jsonl",)):
    """Run `gpt124m ARGV --out-dir OUT` with OUT holding a previous run's files; return the
    error line."""
    out = tmp_path / "out"
    for name in previous:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(SENTINEL)
    before = snapshot(out)
    proc = subprocess.run(
        [sys.executable, "-m", "gpt124m", *argv, "--out-dir", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"gpt124m {argv[0]}: error: "), lines[0]
    for text in expected:
        assert text in lines[0]
    assert proc.stdout == ""
    assert snapshot(out) == before  # nothing overwritten, nothing added
    return lines[0]


def train_argv(inputs, *flags) -> list[str]:
    settings = ["--model", "tiny", "--data-dir", str(inputs["root"] / "shards"), "--seq-len", "32"]
    return ["train", *settings, "--max-steps", "2", *flags]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--data-dir", "{root}/missing"], ["missing", "not found"]),
        (["--data-dir", "{root}/empty"], ["empty", "not a prepared data directory"]),
        # was `IndexError: index out of range in self` at the first step (rc 1)
        (
            ["--data-dir", "{root}/damaged"],
            ["corrupt shard", "damaged/train_000000.bin: token id 65535", "vocabulary of 50,257"],
        ),
        (["--resume", "{root}/missing"], ["--resume", "no such checkpoint directory"]),
        (["--resume", "{root}/a_file.txt"], ["--resume", "not a checkpoint directory"]),
        (["--resume", "{model}"], ["--resume", "a model directory, not a training checkpoint"]),
        (["--precision", "fp12"], ["--precision: invalid choice: 'fp12'", "fp32"]),
        (["--max-lr", "-1"], ["--max-lr -1.0: must be positive"]),
        (["--max-lr", "1e-4", "--min-lr", "1e-3"], ["--min-lr 0.001", "--max-lr"]),
        # 650 GiB of weights: refused before a byte is allocated (the kernel killed it silently)
        (["--model", "gpt3-175b"], ["gpt3-175b: its fp32 weights alone need 65", "available"]),
        (["--model", "~nobody_here/model"], ["~nobody_here/model: no user 'nobody_here'"]),
    ],
)
def test_train_bad_input(tmp_path, inputs, flags, expected):
    flags = [f.format(root=inputs["root"], model=inputs["model"]) for f in flags]
    fails_cleanly(tmp_path, train_argv(inputs, *flags), *expected)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_wandb_without_a_login_is_one_line_before_anything_is_written(
    tmp_path, inputs, monkeypatch, command
):
    """Real wandb, no credentials anywhere (a fresh HOME, no WANDB_* variables): it raised a
    40-line UsageError after OUT_DIR was made (and in a terminal, prompted for a key)."""
    pytest.importorskip("wandb")
    for name in [n for n in os.environ if n.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    argv = (train_argv if command == "train" else sft_argv)(inputs, "--wandb-project", "demo")
    fails_cleanly(tmp_path, argv, "--wandb-project demo: no W&B login", "`wandb login`")
    assert not (tmp_path / "home" / ".netrc").exists()  # and no login was made


def sft_argv(inputs, *flags) -> list[str]:
    settings = ["--base", "tiny", "--data", str(inputs["root"] / "alpaca.json")]
    return ["sft", *settings, "--max-steps", "1", "--batch-size", "2", *flags]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--data", "{root}/qa.json"], ["no usable examples", "2 missing 'instruction'"]),
        (["--data", "{root}/missing.json"], ["missing.json: no such file"]),
        (["--split-seed", "-1"], ["--split-seed -1: must be >= 0"]),
        (["--resume", "{root}/missing"], ["--resume", "no such checkpoint directory"]),
        (["--resume", "{model}"], ["--resume", "a model directory, not a training checkpoint"]),
        (["--precision", "fp12"], ["--precision: invalid choice: 'fp12'"]),
        (["--max-lr", "-1"], ["--max-lr -1.0: must be positive"]),
    ],
)
def test_sft_bad_input(tmp_path, inputs, flags, expected):
    flags = [f.format(root=inputs["root"], model=inputs["model"]) for f in flags]
    line = fails_cleanly(tmp_path, sft_argv(inputs, *flags), *expected)
    assert line.count("missing 'instruction'") <= 1  # the reasons are given once


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--precision", "fp12"], ["--precision: invalid choice: 'fp12'"]),
        (["--max-steps", "0"], ["--max-steps 0: must be positive"]),
    ],
)
def test_quickstart_bad_input(tmp_path, flags, expected):
    # quickstart replaces a previous run's checkpoints, but not when the command is wrong
    previous = ("metrics.jsonl", "checkpoints/step_0000080/model.safetensors")
    fails_cleanly(tmp_path, ["quickstart", *flags], *expected, previous=previous)


def test_quickstart_out_dir_that_is_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text(SENTINEL)
    proc = subprocess.run(
        [sys.executable, "-m", "gpt124m", "quickstart", "--out-dir", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"gpt124m quickstart: error: --out-dir {target}: a file, not a directory"
    ]
    assert target.read_text() == SENTINEL


# One per command whose flags are checked before any work. `--help` has always skipped torch;
# these say that a wrong value is answered as fast (0.4 s, against 3 s to import torch here).
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--max-steps", "-1"],
        ["train", "--optimizer", "muon", "--muon-lr", "0"],
        ["sft", "--base", "tiny", "--data", "x.json", "--max-lr", "-1"],
        ["quickstart", "--max-steps", "0"],
        ["eval", "loss", "--model", "tiny", "--data", "x.txt", "--batch-size", "0"],
        ["generate", "--model", "tiny", "--prompt", "hi", "--num-samples", "0"],
        ["prepare", "--source", "x", "--shard-tokens", "0"],
    ],
    ids=lambda argv: argv[0],
)
def test_bad_flag_values_are_refused_before_torch_is_imported(tmp_path, argv):
    code = (
        "import sys\n"
        "from gpt124m.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"gpt124m {argv[0]}: error: ") and "Traceback" not in proc.stderr
    assert proc.stdout.strip() == "no torch"


def test_eval_out_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    """Found before the model loads, not after the whole evaluation."""
    target = tmp_path / "results.txt"
    target.write_text(SENTINEL)
    argv = ["eval", "loss", "--model", "no-such-model", "--data", "x.txt", "--out", str(target)]
    assert main(argv) == 2
    assert f"--out-dir {target}: a file, not a directory" in capsys.readouterr().err
    assert target.read_text() == SENTINEL


@pytest.mark.parametrize("command", ["loss", "hellaswag"])
def test_eval_out_dir_below_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    """`--out-dir FILE/x` was only tried once the evaluation was over, whose work was then lost
    to `[Errno 20] Not a directory`; a missing model (and data) would be found first if the
    evaluation began."""
    target = tmp_path / "results.txt"
    target.write_text(SENTINEL)
    data = "x.txt" if command == "loss" else "x.jsonl"
    argv = ["eval", command, "--model", "no-such-model", "--data", data]
    assert main([*argv, "--out-dir", str(target / "sub")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gpt124m eval: error: --out-dir {target / 'sub'}: {target} is a file, not a directory"
    ]
    assert target.read_text() == SENTINEL


@pytest.mark.parametrize("command", ["train", "sft"])
@pytest.mark.parametrize("below", [False, True], ids=["file", "below-a-file"])
def test_run_out_dir_that_is_a_file_is_named_before_any_work(
    tmp_path, inputs, capsys, command, below
):
    """`train --out-dir /etc/passwd` said `[Errno 17] File exists: '/etc/passwd'`, after the model
    and the data had loaded."""
    target = tmp_path / "a_file"
    target.write_text(SENTINEL)
    out = target / "sub" if below else target
    argv = train_argv(inputs) if command == "train" else sft_argv(inputs)
    assert main([*argv, "--out-dir", str(out)]) == 2
    what = f"{target} is a file" if below else "a file"
    assert capsys.readouterr().err.splitlines() == [
        f"gpt124m {command}: error: --out-dir {out}: {what}, not a directory"
    ]
    assert target.read_text() == SENTINEL


def test_quickstart_replaces_only_its_own_previous_run(tmp_path, capsys, fixed_batches, run_config):
    """Another run's checkpoints in --out-dir are refused, and stay; a quickstart's are fair game.
    (They were deleted before the data was checked, so a later error lost them as well.)"""
    import dataclasses

    import torch

    from gpt124m.config import get_preset
    from gpt124m.model import GPT
    from gpt124m.quickstart import _check_replaceable
    from gpt124m.train.trainer import fit

    out = tmp_path / "run"
    cfg = dataclasses.replace(run_config(tmp_path), data_dir=str(tmp_path / "mine"))
    torch.manual_seed(0)
    fit(cfg, GPT(get_preset("tiny")), fixed_batches())
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main(["quickstart", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "its checkpoints are not a quickstart run's" in err and "another --out-dir" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == saved
    _check_replaceable(out / "checkpoints", tmp_path / "mine")  # its own data: replaceable


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_run_never_writes_its_model_over_the_one_it_starts_from(tmp_path, inputs, command):
    """`--base OUT/model --out-dir OUT`: the run's final model would replace its source."""
    source = str(tmp_path / "out" / "model")
    argv = (
        train_argv(inputs, "--model", source)
        if command == "train"
        else sft_argv(inputs, "--base", source)
    )
    flag = "--model" if command == "train" else "--base"
    previous = ("model/model.safetensors", "model/config.json")
    fails_cleanly(tmp_path, argv, f"{flag} {source}: this run writes its model", previous=previous)


def test_a_preset_is_built_only_where_its_weights_fit(monkeypatch):
    from gpt124m import device
    from gpt124m.config import get_preset
    from gpt124m.loading import fresh_model

    need = get_preset("tiny").memory_bytes()["fp32_weights"]
    monkeypatch.setattr(device, "available_host_memory", lambda: need - 1)
    with pytest.raises(ValueError, match="tiny: its fp32 weights alone need"):
        fresh_model("tiny")
    monkeypatch.setattr(device, "available_host_memory", lambda: need)
    assert fresh_model("tiny").num_params() * 4 == need
    monkeypatch.setattr(device, "available_host_memory", lambda: None)  # unknown: no check
    fresh_model("tiny")


@pytest.mark.parametrize(
    ("key", "value", "held"),
    [("n_layer", 100_000, 2), ("n_embd", 2**40, 32), ("block_size", 96, 64)],
)
def test_a_config_that_contradicts_its_weights_is_refused_before_building(
    tmp_path, tiny_model_dir, key, value, held
):
    """A hand-edited config.json: 100,000 layers took minutes to build before being refused;
    a width of 2**40 overflowed torch's size arithmetic in a 46-line traceback."""
    import shutil
    import time

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    assert config["model"][key] == held  # precondition: the tiny preset's own value
    config["model"][key] = value
    (bad / "config.json").write_text(json.dumps(config))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gpt124m", "generate", "--model", str(bad), "--prompt", "Hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        f"gpt124m generate: error: {bad / 'model.safetensors'}: the config's {key} is {value:,}, "
        f"but the weights have "
        f"{held:,}"
    )
    assert time.monotonic() - start < 60


def test_output_into_a_closed_pipe_ends_quietly(tiny_model_dir):
    """`gpt124m generate ... | head -c1`: the reader has gone; no 'Broken pipe' error, exit 0."""
    argv = [sys.executable, "-m", "gpt124m", "generate", "--model", str(tiny_model_dir)]
    argv += ["--prompt", "Hi", "--max-new-tokens", "40", "--num-samples", "3"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before anything is written: the first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err, err


def test_prepare_whose_reader_has_gone_still_finishes_its_shards(tmp_path):
    """`gpt124m prepare ... | head -1`: the summary it prints comes after the shards are written;
    a reader gone by then is no failure."""
    out = tmp_path / "data"
    argv = [sys.executable, "-m", "gpt124m", "prepare", "--source", "builtin", "--out-dir",
            str(out), "--max-tokens", "20000", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err
    assert json.loads((out / "manifest.json").read_text())["complete"]
