"""`gpt124m quickstart`: the whole pretraining flow, offline, in a few CPU minutes.

It prepares the corpus bundled with the package, trains the `quickstart` recipe, and reports how
far the model got (validation loss before and after, greedy and sampled text from its prompts),
where the data, checkpoints, curves and final model are, and the command that trains it further.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from gpt124m.train.config import TrainConfig, load_recipe

log = logging.getLogger(__name__)

GREEDY_TOKENS = 32


def run_quickstart(
    out_dir: str = "runs/quickstart",
    *,
    max_steps: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """`precision` None keeps the recipe's `auto` (bf16 where the CPU runs it natively)."""
    started = time.perf_counter()
    out = Path(out_dir)
    data_dir = out / "data"
    cfg = TrainConfig(**load_recipe("quickstart"))
    cfg = dataclasses.replace(cfg, data_dir=str(data_dir), out_dir=str(out))
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    if precision is not None:
        cfg = dataclasses.replace(cfg, precision=precision)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out-dir {out}: a file, not a directory")
    cfg.validate()  # bad settings stop here, before the previous run is touched
    from gpt124m.data.prepare import PrepareConfig, prepare  # torch: after the checks above
    from gpt124m.train.pretrain import pretrain

    previous = out / "checkpoints"
    if previous.exists():
        _check_replaceable(previous, data_dir)
    prepare(  # before the previous run goes: data prepared otherwise stops here
        PrepareConfig(
            source="builtin", out_dir=str(data_dir), shard_tokens=1_000_000, val_tokens=65_536
        )
    )
    if previous.exists():
        log.info("replacing the previous quickstart run in %s", out)
        shutil.rmtree(previous)
    summary = pretrain(cfg)
    greedy, sampled = _samples(Path(summary["model_dir"]), cfg.sample_prompts)
    val = _val_losses(out)
    print(_report(cfg, summary, val, greedy, sampled, time.perf_counter() - started))
    return {**summary, "val_losses": val, "greedy": greedy, "sampled": sampled}


def _check_replaceable(checkpoints: Path, data_dir: Path) -> None:
    """Quickstart starts afresh over its own previous run only: checkpoints of a run that
    trained on other data (or that cannot be read) are someone's work, and stay."""
    from gpt124m.checkpoint import read_config
    from gpt124m.train.checkpointing import list_checkpoints

    found = list_checkpoints(checkpoints)
    if not found:
        return
    try:
        recorded = read_config(found[-1]).get("training", {}).get("data_dir")
    except (ValueError, OSError):
        recorded = None
    if not isinstance(recorded, str) or Path(recorded).resolve() != data_dir.resolve():
        raise ValueError(
            f"--out-dir {checkpoints.parent}: its checkpoints are not a quickstart run's "
            f"(trained on {recorded or 'unknown data'}); give another --out-dir"
        )


def _val_losses(out: Path) -> list[float]:
    from gpt124m.train.metrics import MetricsLog

    return [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if r["kind"] == "val"]


def _samples(model_dir: Path, prompts: list[str]) -> tuple[list[str], list[str]]:
    """Greedy and sampled continuations of each prompt, from the saved model."""
    from gpt124m.generate import GenerationConfig, generate_text
    from gpt124m.loading import load_model
    from gpt124m.tokenizer import get_tokenizer

    model, tok = load_model(model_dir), get_tokenizer()
    greedy = generate_text(model, tok, prompts, GenerationConfig(max_new_tokens=GREEDY_TOKENS))
    sampling = GenerationConfig(
        max_new_tokens=48, do_sample=True, temperature=0.8, top_k=40, seed=0
    )
    return greedy, generate_text(model, tok, prompts, sampling)


def continue_command(cfg: TrainConfig, model_dir: Path) -> str:
    """The command that trains the quickstart's model further (a new run from its weights)."""
    argv = ["gpt124m", "train", "--config", "quickstart", "--model", str(model_dir)]
    argv += ["--data-dir", cfg.data_dir, "--out-dir", f"{cfg.out_dir.rstrip('/')}-more"]
    argv += ["--max-steps", str(max(1000, 5 * cfg.max_steps))]
    return shlex.join(argv)


def _report(cfg, summary, val, greedy, sampled, wall) -> str:
    model_dir = Path(summary["model_dir"])
    show = lambda text: text.replace("\n", "\\n")  # noqa: E731 - one sample per line
    lines = [
        "",
        f"validation loss: {val[0]:.2f} at the start -> {val[-1]:.2f} after {summary['steps']} "
        f"steps ({summary['tokens_seen']:,} tokens; {wall:.0f} s in all)",
        "",
    ]
    for prompt, g, s in zip(cfg.sample_prompts, greedy, sampled, strict=True):
        lines += [f"greedy  | {show(prompt + g)}", f"sampled | {show(prompt + s)}", ""]
    lines += [
        f"data        {cfg.data_dir}/",
        f"checkpoints {Path(cfg.out_dir) / 'checkpoints'}/",
        f"metrics     {Path(cfg.out_dir) / 'metrics.jsonl'}",
        f"curves      {Path(cfg.out_dir) / 'curves.png'}",
        f"model       {model_dir}/",
        "",
        f"generate:          gpt124m generate --model {model_dir} --prompt {shlex.quote(cfg.sample_prompts[0])}",
        f"continue training: {continue_command(cfg, model_dir)}",
    ]
    return "\n".join(lines)
