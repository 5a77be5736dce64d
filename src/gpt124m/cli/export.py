from __future__ import annotations

import argparse

NAME = "export"
HELP = "Export a model for Hugging Face: with remote code (default) or as a plain GPT-2 checkpoint."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="model directory, exported directory, GPT-2 directory or hub id"
    )
    p.add_argument("out_dir", help="directory to write (must be empty or absent unless --force)")
    p.add_argument(
        "--format",
        default="remote-code",
        choices=["remote-code", "gpt2"],
        help="remote-code: our model class shipped with the weights (trust_remote_code=True); "
        "gpt2: transformers' GPT2LMHeadModel layout, no remote code",
    )
    p.add_argument(
        "--repo-id",
        default="USER/NAME",
        help="hub repo id that the model card's usage snippets load (default: %(default)s)",
    )
    p.add_argument("--license", default="mit", help="license in the model card (default: mit)")
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="hub id of a training data set, for the card (repeatable; default: from the run)",
    )
    p.add_argument("--base-model", help="hub id of the model this one was fine-tuned from")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from gpt124m.hf.export import export
    from gpt124m.hf.hub import format_plan, plan_upload

    out = export(
        args.checkpoint,
        args.out_dir,
        fmt=args.format,
        repo_id=args.repo_id,
        license=args.license,
        datasets=args.dataset,
        base_model=args.base_model,
        force=args.force,
    )
    print(f"{out} ({args.format})")
    print(format_plan(plan_upload(out)))
    return 0
