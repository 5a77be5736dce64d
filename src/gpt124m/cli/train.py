from __future__ import annotations

import argparse
import sys

NAME = "train"
HELP = "Pretrain a GPT on prepared token shards (one process, or torchrun for DDP/FSDP)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt124m.train.config import add_config_arguments, recipe_names

    p.add_argument(
        "--config",
        help=f"a bundled recipe ({', '.join(recipe_names())}) or a YAML file; flags given here "
        "override it",
    )
    add_config_arguments(p)
    p.epilog = (
        "Multi-GPU: torchrun --nproc_per_node 8 -m gpt124m train --config gpt124m-fineweb-edu"
    )


def run(args: argparse.Namespace) -> int:
    from gpt124m.train.config import TrainConfig, config_from_args

    cfg = config_from_args(args, TrainConfig, recipe=args.config)
    # torch only now: a bad flag is reported in a blink, not after the 3 s torch takes to import
    from gpt124m.train.pretrain import pretrain
    from gpt124m.train.step import TrainingDiverged

    try:
        summary = pretrain(cfg)
    except TrainingDiverged as e:
        print(f"gpt124m train: {e}", file=sys.stderr)
        return 1
    if "model_dir" in summary:
        print(f"model written to {summary['model_dir']}")
    return 0
