import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from gpt124m.cli import main
from gpt124m.eval import hellaswag as hs
from gpt124m.loading import load_model


def run_cli(tmp_path, model_dir, data, *extra):
    out = tmp_path / "out"
    argv = ["eval", "hellaswag", "--model", str(model_dir), "--data", str(data)]
    return main([*argv, "--out", str(out), "--device", "cpu", *extra]), out


def test_cli_writes_results_table_chart_and_predictions(tmp_path, model_dir, jsonl_file, capsys):
    code, out = run_cli(tmp_path, model_dir, jsonl_file, "--limit", "5", "--batch-size", "2")
    assert code == 0
    summary = json.loads((out / "hellaswag.json").read_text())
    expected = hs.evaluate(
        load_model(model_dir), hs.load_items(jsonl_file, limit=5), progress=False
    )
    assert summary["results"] == expected.metrics
    assert summary["limit"] == 5 and summary["results"]["harness"]["n"] == 5
    preds = (out / "hellaswag_predictions.jsonl").read_text().splitlines()
    assert [json.loads(p)["ind"] for p in preds] == [100, 101, 102, 103, 104]
    table = (out / "hellaswag_comparison.md").read_text()
    for line in (
        "| GPT-2 124M | completion | 0.2955 |",
        "| GPT-2 124M | harness | 0.3114 |",
        "| GPT-3 Small (125M) | paper | 0.3370 |",
        "| Seed GPT-124M | completion | 0.3315 |",
    ):
        assert line in table
    ours = next(x for x in table.splitlines() if x.startswith("| **") and "| completion |" in x)
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[2] == f"{expected.metrics['completion']['acc_norm']:.4f}"
    lo, hi = map(float, cells[3].split("–"))
    assert lo <= expected.metrics["completion"]["acc_norm"] <= hi and hi - lo > 0.3  # 5 items: wide
    assert cells[4:6] == [f"{expected.metrics['completion']['acc']:.4f}", "n = 5"]
    assert (out / "hellaswag_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert table in stdout
    assert f"acc_norm {expected.metrics['harness']['acc_norm']:.4f}" in stdout


def test_cli_progress_bars_can_be_turned_off(tmp_path, model_dir, jsonl_file, capsys):
    """`--no-progress`, as `eval loss` and `prepare` have it."""
    assert run_cli(tmp_path, model_dir, jsonl_file, "--limit", "2")[0] == 0
    err = capsys.readouterr().err
    assert "HellaSwag completion: 100%" in err and "HellaSwag harness: 100%" in err
    assert run_cli(tmp_path, model_dir, jsonl_file, "--limit", "2", "--no-progress")[0] == 0
    assert "HellaSwag" not in capsys.readouterr().err


def test_cli_names_the_bad_line(tmp_path, model_dir, rows, capsys):
    lines = [json.dumps(r) for r in rows[:4]]
    lines[1] = json.dumps({**rows[1], "endings": [1, 2, 3, 4]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _ = run_cli(tmp_path, model_dir, bad)
    assert code == 2
    assert "bad.jsonl: line 2: endings must be a list" in capsys.readouterr().err
    code, _ = run_cli(tmp_path, model_dir, tmp_path / "missing.jsonl")
    assert code == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path, model_dir, make_rows, make_parquet, torchrun):
    argv, env = torchrun
    data = make_parquet(tmp_path / "val.parquet", make_rows(9))  # 9 items: ranks get 5 and 4
    args = [
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        argv(2, "eval", "hellaswag", *args, "--out", str(tmp_path / "ddp")),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["eval", "hellaswag", *args, "--out", str(tmp_path / "one")]) == 0
    ddp = json.loads((tmp_path / "ddp" / "hellaswag.json").read_text())
    one = json.loads((tmp_path / "one" / "hellaswag.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["results"] == one["results"]
    assert ddp["results"]["completion"]["n"] == 9

    def read(d):
        lines = (tmp_path / d / "hellaswag_predictions.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    for a, b in zip(read("ddp"), read("one"), strict=True):
        assert a["ind"] == b["ind"]
        for conv, key in (("completion", "loss_sum"), ("harness", "logprob")):
            assert (a[conv]["pred"], a[conv]["pred_norm"]) == (
                b[conv]["pred"],
                b[conv]["pred_norm"],
            )
            np.testing.assert_allclose(a[conv][key], b[conv][key], rtol=1e-6)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no network"])
def test_offline_without_data_fails_at_once_in_one_line(tmp_path, offline):
    """No cached copy and no Hub: one line that says to pass --data, not a minute of retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "PROXY" not in k}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # nothing listens there: the connection is refused, as with no network
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "gpt124m", "eval", "hellaswag", "--model", "nano", "--limit", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpt124m eval: error: HellaSwag (Rowan/hellaswag) is not in the")
    assert "pass --data FILE" in lines[0]
    assert ("HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE" else "127.0.0.1") in lines[0]
