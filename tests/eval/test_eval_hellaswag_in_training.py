import json

import pytest

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train.evaluators import Hooks, hellaswag_hook
from gpt124m.train.trainer import fit


def config(run_config, tmp_path, data):
    return run_config(tmp_path, hellaswag_every=2, hellaswag_data=str(data), hellaswag_limit=5)


def test_training_scores_hellaswag_on_its_interval(tmp_path, jsonl_file, fixed_batches, run_config):
    """Each score recorded during training is what `evaluate` gives the checkpoint of that step
    (the completion convention, on the first `--hellaswag-limit` items), and the scores move as
    the model learns."""
    from gpt124m.eval import hellaswag as hs
    from gpt124m.eval.hellaswag_data import load_items
    from gpt124m.loading import load_model

    from .conftest import lively_tiny_model

    cfg = run_config(
        tmp_path,
        hellaswag_every=2,
        hellaswag_data=str(jsonl_file),
        hellaswag_limit=10,
        checkpoint_every=2,
        max_steps=4,
        max_lr=3e-2,
    )
    model = lively_tiny_model()
    start = hs.evaluate(model, load_items(jsonl_file)[:10], conventions=("completion",))
    summary = fit(cfg, model.train(), fixed_batches(), hooks=Hooks(hellaswag=hellaswag_hook(cfg)))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["kind"] == "hellaswag"]
    assert [r["step"] for r in scored] == [2, 4]
    for record in scored:
        checkpoint = load_model(run / "checkpoints" / f"step_{record['step']:07d}")
        expected = hs.evaluate(checkpoint, load_items(jsonl_file)[:10], conventions=("completion",))
        assert {k: record[k] for k in expected.metrics["completion"]} == expected.metrics[
            "completion"
        ]
    # precondition: the scores move, so a score of the wrong step's weights could not match
    assert len({r["acc_norm"] for r in scored} | {start.metrics["completion"]["acc_norm"]}) > 1
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
