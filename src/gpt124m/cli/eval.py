from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gpt124m.flags import PRECISIONS, TORCHRUN_DEVICE_HELP, from_args, option
from gpt124m.flags import add_arguments as add_flags

NAME = "eval"
HELP = "Evaluate a model: HellaSwag (two scoring conventions) or validation loss."

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalOptions:
    model: str = option(help="model directory, GPT-2 directory or hub id")
    device: str = option("auto", TORCHRUN_DEVICE_HELP)
    precision: str = option(
        "fp32",
        "autocast precision; auto picks bf16 where the hardware runs it natively",
        choices=PRECISIONS,
    )
    progress: bool = option(True, "a progress bar on stderr")


@dataclass(kw_only=True)
class HellaSwagOptions(EvalOptions):
    out_dir: str = option("hellaswag-results", "directory for the result files", aliases=("--out",))
    data: str | None = option(
        None,
        "local .jsonl or .parquet in the official layout (default: download the validation "
        "split of Rowan/hellaswag from the Hugging Face Hub, cached)",
    )
    limit: int | None = option(None, "evaluate only the first N items")
    batch_size: int = option(16, "items per forward pass")
    cache_dir: str | None = option(None, "Hugging Face cache directory for the download")
    name: str | None = option(None, "the model's name in the comparison (default: --model)")


@dataclass(kw_only=True)
class LossOptions(EvalOptions):
    out_dir: str | None = option(
        None, "directory for loss.json (default: only print the result)", aliases=("--out",)
    )
    data: str = option(help="prepared shard directory (val split) or a UTF-8 text file")
    tokens: int | None = option(
        None, "token budget over all ranks, in whole sequences (default: all there are)"
    )
    batch_size: int = option(8, "sequences per forward pass")
    seq_len: int | None = option(None, "tokens per sequence (default: the model's block size)")


OPTIONS = {"hellaswag": HellaSwagOptions, "loss": LossOptions}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    hs = sub.add_parser(
        "hellaswag",
        help="HellaSwag validation accuracy, completion and harness conventions side by side",
        description="HellaSwag validation accuracy under the completion (build-nanogpt) and "
        "harness (lm-evaluation-harness) conventions, with a comparison to published numbers. "
        "Multi-GPU: torchrun --nproc_per_node N -m gpt124m eval hellaswag ...",
    )
    add_flags(hs, HellaSwagOptions)
    loss = sub.add_parser(
        "loss",
        help="mean loss, perplexity and bits per byte on held-out tokens",
        description="Mean next-token loss, perplexity and bits per byte over a deterministic "
        "read of a prepared shard directory's val split, or of a text file.",
    )
    add_flags(loss, LossOptions)


def run(args: argparse.Namespace) -> int:
    command = args.eval_command
    args = from_args(args, OPTIONS[command])
    for flag in ("limit", "batch_size", "tokens", "seq_len"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.out_dir:  # found before the evaluation, not when its results are written
        from gpt124m.atomic import check_out_dir

        check_out_dir(args.out_dir)
    from gpt124m.train import distributed  # torch: after the cheap checks

    info = distributed.init(args.device)
    try:
        if command == "hellaswag":
            return _hellaswag(args, info)
        return _loss(args, info)
    finally:
        distributed.shutdown()


def _setup(args, info):
    import torch

    from gpt124m.device import resolve_precision
    from gpt124m.loading import load_model

    precision = resolve_precision(args.precision, info.device)
    # fp32 weights whatever the stored dtype: autocast, as in training, decides the compute, so
    # `--precision fp32` on a model saved in bf16 really scores in fp32.
    model = load_model(args.model, device=info.device, dtype=torch.float32)
    if info.is_main:
        log.info(
            "loaded %s (%s parameters) on %s, %s, %d rank(s)",
            args.model,
            f"{model.num_params():,}",
            info.device,
            str(precision).removeprefix("torch."),
            info.world_size,
        )
    return model, precision


def _hellaswag(args, info) -> int:
    from gpt124m.atomic import atomic_write_text
    from gpt124m.eval import report
    from gpt124m.eval.hellaswag import (
        LOCAL_COPY_HINT,
        HellaSwagUnavailable,
        evaluate,
        load_items,
        write_predictions,
    )

    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"--data {args.data}: no such file")
    try:
        items = load_items(args.data, limit=args.limit, cache_dir=args.cache_dir)
    except HellaSwagUnavailable as e:
        raise FileNotFoundError(f"{e}; pass --data FILE, {LOCAL_COPY_HINT}") from None
    model, precision = _setup(args, info)
    result = evaluate(
        model,
        items,
        batch_size=args.batch_size,
        device=info.device,
        autocast_dtype=precision,
        rank=info.rank,
        world_size=info.world_size,
        progress=args.progress,
    )
    if not info.is_main:
        return 0
    name = args.name or args.model
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(result.records, out / "hellaswag_predictions.jsonl")
    rows = report.comparison_rows(result.metrics, name)
    table = report.comparison_table(rows)
    atomic_write_text(out / "hellaswag_comparison.md", table)
    report.plot_comparison(rows, out / "hellaswag_comparison.png", title=f"HellaSwag: {name}")
    summary = {
        "model": args.model,
        "data": args.data or "hub:Rowan/hellaswag (validation)",
        "limit": args.limit,
        "precision": str(precision).removeprefix("torch."),
        "world_size": info.world_size,
        "results": result.metrics,
    }
    atomic_write_text(out / "hellaswag.json", json.dumps(summary, indent=2) + "\n")
    for conv, m in result.metrics.items():
        print(f"{conv:<10} acc {m['acc']:.4f}  acc_norm {m['acc_norm']:.4f}  n {m['n']:,}")
    print()
    print(table, end="")
    log.info("wrote %s (predictions, comparison table and chart, hellaswag.json)", out)
    return 0


def _loss(args, info) -> int:
    import numpy as np

    from gpt124m.data.loader import token_batches, validation_batches
    from gpt124m.eval.loss import evaluate_loss, gpt2_token_bytes

    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such file or directory")
    model, precision = _setup(args, info)
    seq_len = args.seq_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's block size")
    shape = dict(
        batch_size=args.batch_size,
        seq_len=seq_len,
        max_tokens=args.tokens,
        rank=info.rank,
        world_size=info.world_size,
    )
    if data.is_dir():
        batches = validation_batches(data, **shape)
    else:
        from gpt124m.tokenizer import get_tokenizer

        try:
            text = data.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--data {data}: not UTF-8 text ({e})") from None
        tokens = np.asarray(get_tokenizer().encode(text), dtype=np.uint16)
        batches = token_batches(tokens, **shape)
    result = evaluate_loss(
        model,
        batches,
        device=info.device,
        autocast_dtype=precision,
        token_bytes=gpt2_token_bytes(),
        progress=args.progress and info.is_main,
        desc="eval loss" if info.world_size == 1 else f"eval loss (rank 0/{info.world_size})",
    )
    if not info.is_main:
        return 0
    result.update(model=args.model, data=str(data), seq_len=seq_len, world_size=info.world_size)
    print(
        f"loss {result['loss']:.4f}  ppl {result['ppl']:.3f}  bits/byte {result['bpb']:.4f}  "
        f"tokens {result['tokens']:,}  bytes {result['bytes']:,}"
    )
    if args.out_dir:
        from gpt124m.atomic import atomic_write_text

        path = Path(args.out_dir) / "loss.json"
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", path)
    return 0
