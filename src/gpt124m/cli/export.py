from __future__ import annotations

import argparse
from dataclasses import dataclass

from gpt124m.flags import add_arguments as add_flags
from gpt124m.flags import from_args, option
from gpt124m.hf.layout import DEFAULT_REPO_ID, FORMATS

NAME = "export"
HELP = "Export a model for Hugging Face: with remote code (default) or as a plain GPT-2 checkpoint."


@dataclass(kw_only=True)
class ExportOptions:
    checkpoint: str = option(
        help="model directory, exported directory, GPT-2 directory or hub id", positional=True
    )
    out_dir: str = option(
        help="directory to write: absent, empty, or an earlier export with --force",
        positional=True,
    )
    format: str = option(
        "remote-code",
        "remote-code: our model class shipped with the weights (trust_remote_code=True); "
        "gpt2: transformers' GPT2LMHeadModel layout, no remote code",
        choices=FORMATS,
    )
    repo_id: str = option(DEFAULT_REPO_ID, "hub repo id that the model card's usage snippets load")
    license: str = option("mit", "license in the model card")
    dataset: list[str] = option(
        default_factory=list,
        help="hub id of a training data set, for the card (repeatable; default: from the run)",
        repeat=True,
    )
    base_model: str | None = option(None, "hub id of the model this one was fine-tuned from")
    force: bool = option(
        False,
        "replace OUT_DIR if it is an earlier export: plain files that export writes only, and "
        "an export's config.json (model_type gpt124m or gpt2); any other folder, such as "
        "a run's with checkpoints/ or metrics.jsonl, is refused and left as it was",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, ExportOptions)


def run(args: argparse.Namespace) -> int:
    from gpt124m.hf.export import export
    from gpt124m.hf.hub import format_plan, plan_upload

    opts = from_args(args, ExportOptions)
    out = export(
        opts.checkpoint,
        opts.out_dir,
        fmt=opts.format,
        repo_id=opts.repo_id,
        license=opts.license,
        datasets=opts.dataset,
        base_model=opts.base_model,
        force=opts.force,
    )
    print(f"{out} ({opts.format})")
    print(format_plan(plan_upload(out)))
    return 0
