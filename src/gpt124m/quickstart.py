"""`gpt124m quickstart`: the whole pretraining flow, offline, in a few CPU minutes.

It prepares the corpus bundled with the package, trains the `quickstart` recipe, and reports where
the data, checkpoints, curves and final model are, with a sample from the model.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from gpt124m.train.config import TrainConfig, load_recipe

log = logging.getLogger(__name__)


def run_quickstart(
    out_dir: str = "runs/quickstart",
    *,
    max_steps: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """`precision` None keeps the recipe's `auto` (bf16 where the CPU runs it natively)."""
    from gpt124m.data.prepare import PrepareConfig, prepare
    from gpt124m.generate import GenerationConfig, generate_text
    from gpt124m.tokenizer import get_tokenizer
    from gpt124m.train.trainer import pretrain

    out = Path(out_dir)
    data_dir = out / "data"
    cfg = TrainConfig(**load_recipe("quickstart"))
    cfg = dataclasses.replace(cfg, data_dir=str(data_dir), out_dir=str(out))
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    if precision is not None:
        cfg = dataclasses.replace(cfg, precision=precision)
    cfg.validate()  # bad settings stop here, before the previous run is touched
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out-dir {out}: a file, not a directory")
    if (out / "checkpoints").exists():
        log.info("replacing the previous quickstart run in %s", out)
        shutil.rmtree(out / "checkpoints")
    prepare(
        PrepareConfig(
            source="builtin", out_dir=str(data_dir), shard_tokens=1_000_000, val_tokens=65_536
        )
    )
    summary = pretrain(cfg)

    from gpt124m.checkpoint import load_model
    from gpt124m.train.metrics import MetricsLog

    model_dir = Path(summary["model_dir"])
    val = [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if r["kind"] == "val"]
    model = load_model(model_dir)
    prompt = cfg.sample_prompts[0]
    text = generate_text(
        model,
        get_tokenizer(),
        [prompt],
        GenerationConfig(max_new_tokens=60, do_sample=True, top_k=40, seed=0),
    )[0]
    report = [
        "",
        f"val loss: {val[0]:.3f} at step 0 -> {val[-1]:.3f} after {summary['steps']} steps "
        f"({summary['tokens_seen']:,} tokens, {summary['wall_time_s']:.0f} s)",
        "",
        f"sample: {prompt}{text}",
        "",
        f"data        {data_dir}/",
        f"checkpoints {out / 'checkpoints'}/",
        f"metrics     {out / 'metrics.jsonl'}",
        f"curves      {out / 'curves.png'}",
        f"model       {model_dir}/",
        "",
        f'next: gpt124m generate --model {model_dir} --prompt "{prompt}"',
    ]
    print("\n".join(report))
    return {**summary, "val_losses": val}
