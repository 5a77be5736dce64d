from __future__ import annotations

import argparse
import json

NAME = "prepare"
HELP = "Tokenize a Hugging Face dataset, local text files or the bundled corpus into shards."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt124m.data.prepare import PrepareConfig
    from gpt124m.flags import add_arguments

    add_arguments(p, PrepareConfig)


def run(args: argparse.Namespace) -> int:
    from gpt124m.data.prepare import PrepareConfig, prepare
    from gpt124m.flags import from_args

    cfg = from_args(args, PrepareConfig)
    manifest = prepare(cfg)
    summary = {
        "out_dir": cfg.out_dir,
        "tokens": manifest["tokens"],
        "documents": manifest["documents"],
        "splits": manifest["splits"],
        "skipped": manifest["skipped"],
        "repaired": manifest["repaired"],
        "truncated_by_max_tokens": manifest["truncated_by_max_tokens"],
    }
    print(json.dumps(summary, indent=2))
    return 0
