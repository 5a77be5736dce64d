import json

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train.evaluators import Hooks, hellaswag_hook
from gpt124m.train.trainer import fit


def config(run_config, tmp_path, data):
    return run_config(tmp_path, hellaswag_every=2, hellaswag_data=str(data), hellaswag_limit=5)


def test_training_scores_hellaswag_on_its_interval(tmp_path, jsonl_file, fixed_batches, run_config):
    cfg = config(run_config, tmp_path, jsonl_file)
    torch.manual_seed(0)
    summary = fit(
        cfg, GPT(get_preset("tiny")), fixed_batches(), hooks=Hooks(hellaswag=hellaswag_hook(cfg))
    )
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["kind"] == "hellaswag"]
    assert [r["step"] for r in scored] == [2, 4]
    assert all(r["n"] == 5 and 0.0 <= r["acc_norm"] <= 1.0 for r in scored)
    assert summary["hellaswag"]["acc_norm"] == scored[-1]["acc_norm"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_malformed_hellaswag_data_stops_the_run_before_the_first_step(
    tmp_path, rows, make_jsonl, fixed_batches, run_config
):
    del rows[3]["endings"]
    data = make_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = config(run_config, tmp_path, data)
    with pytest.raises(ValueError, match="endings"):
        fit(
            cfg,
            GPT(get_preset("tiny")),
            fixed_batches(),
            hooks=Hooks(hellaswag=hellaswag_hook(cfg)),
        )
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or '"train"' not in metrics.read_text()
