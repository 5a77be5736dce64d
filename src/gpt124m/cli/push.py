from __future__ import annotations

import argparse
import logging

NAME = "push"
HELP = "Upload an exported directory to the Hugging Face Hub (token from HF_TOKEN or a login)."

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="a directory written by `gpt124m export`")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME; created if absent")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded; touch no network"
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.hf.hub import card_names_repo, check_repo_id, format_plan, plan_upload, push

    check_repo_id(args.repo_id)
    files = plan_upload(args.out_dir)
    if args.dry_run:
        visibility = "private" if args.private else "public"
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
