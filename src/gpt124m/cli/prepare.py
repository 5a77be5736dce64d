from __future__ import annotations

import argparse
import json
import os

NAME = "prepare"
HELP = "Tokenize a Hugging Face dataset, local text files or the bundled corpus into shards."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        default="HuggingFaceFW/fineweb-edu",
        help="hub dataset id, local file/dir/glob (.txt .jsonl .json .parquet), or 'builtin'",
    )
    p.add_argument("--out", default="data/fineweb-edu", help="output directory")
    p.add_argument("--hf-config", default="sample-10BT", help="hub dataset config ('' for none)")
    p.add_argument("--split", default="train", help="hub dataset split")
    p.add_argument(
        "--text-field", default="text", help="field holding the text (json, parquet, hub)"
    )
    p.add_argument(
        "--split-lines",
        action="store_true",
        help="split .txt files into documents at blank lines (default: one document per file)",
    )
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument(
        "--val-tokens",
        type=int,
        default=None,
        help="validation tokens (default: one shard, at most a tenth of --max-tokens or of a "
        "source smaller than one shard)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="cap on all tokens written")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoding threads (default: cores)"
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        source=args.source,
        out_dir=args.out,
        hf_config=args.hf_config or None,
        split=args.split,
        text_field=args.text_field,
        split_lines=args.split_lines,
        shard_tokens=args.shard_tokens,
        val_tokens=args.val_tokens,
        max_tokens=args.max_tokens,
        workers=args.workers,
    )
    manifest = prepare(cfg)
    summary = {
        "out_dir": args.out,
        "tokens": manifest["tokens"],
        "documents": manifest["documents"],
        "splits": manifest["splits"],
        "skipped": manifest["skipped"],
        "repaired": manifest["repaired"],
        "truncated_by_max_tokens": manifest["truncated_by_max_tokens"],
    }
    print(json.dumps(summary, indent=2))
    return 0
