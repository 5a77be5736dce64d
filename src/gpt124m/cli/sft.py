from __future__ import annotations

import argparse
import sys

NAME = "sft"
HELP = "Instruction-tune a model on Alpaca-format data: full fine-tuning or LoRA (peft)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt124m.sft.config import add_sft_arguments, recipe_names

    p.add_argument(
        "--config",
        help=f"a bundled recipe ({', '.join(recipe_names())}) or a YAML file; flags given here "
        "override it",
    )
    add_sft_arguments(p)
    p.epilog = (
        "Unset (None) defaults are resolved per run: --max-lr 5e-5 for full fine-tuning, 3e-4 "
        "for LoRA; --weight-decay 0.1 full, 0.0 LoRA; --seq-len the model's block size; "
        "--micro-batch-size --batch-size / world size; --max-steps from --epochs; "
        "--warmup-steps --warmup-fraction of the steps. "
        "Examples: gpt124m sft --base runs/gpt124m-fineweb-edu/model --data alpaca --out-dir runs/sft | "
        "gpt124m sft --base gpt2 --data my.jsonl --method lora --out-dir runs/lora | "
        "multi-GPU: torchrun --nproc_per_node 8 -m gpt124m sft --config gpt124m-alpaca"
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.sft.config import sft_config_from_args

    cfg = sft_config_from_args(args, recipe=args.config)
    from gpt124m.sft.runner import sft  # torch, once the flags are known to be good
    from gpt124m.train.step import TrainingDiverged

    try:
        summary = sft(cfg)
    except TrainingDiverged as e:
        print(f"gpt124m sft: {e}", file=sys.stderr)
        return 1
    for key in ("adapter_dir", "model_dir"):
        if key in summary:
            print(f"{key.removesuffix('_dir')} written to {summary[key]}")
    return 0
