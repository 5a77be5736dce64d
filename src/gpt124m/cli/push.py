from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from gpt124m.flags import add_arguments as add_flags
from gpt124m.flags import from_args, option

NAME = "push"
HELP = "Upload an exported directory to the Hugging Face Hub (token from HF_TOKEN or a login)."

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PushOptions:
    out_dir: str = option(help="a directory written by `gpt124m export`", positional=True)
    repo_id: str = option(help="USER/NAME or ORG/NAME; created if absent")
    private: bool = option(
        False,
        "create the repo as private, and refuse an existing public one (default: a new repo "
        "takes its owner's default visibility)",
    )
    dry_run: bool = option(
        False, "check the weights against config.json and list what would be uploaded; no network"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, PushOptions)


def run(args: argparse.Namespace) -> int:
    from gpt124m.hf.hub import card_names_repo, check_repo_id, format_plan, plan_upload, push

    args = from_args(args, PushOptions)

    check_repo_id(args.repo_id)
    files = plan_upload(args.out_dir)
    if args.dry_run:
        visibility = "private" if args.private else "the owner's default visibility if new"
        print(f"dry run: would upload to {args.repo_id} ({visibility}):")
        print(format_plan(files))
        if not card_names_repo(args.out_dir, args.repo_id):
            log.warning(
                "README.md does not load %s; re-export with --repo-id %s",
                args.repo_id,
                args.repo_id,
            )
        return 0
    url = push(args.out_dir, args.repo_id, private=args.private)
    print(url)
    return 0
