from __future__ import annotations

import argparse
from dataclasses import dataclass

from gpt124m.flags import add_arguments as add_flags
from gpt124m.flags import from_args, option

NAME = "info"
HELP = "Show a preset's or model directory's config, parameter count and memory needs."


@dataclass(kw_only=True)
class InfoOptions:
    preset: str | None = option(None, "a named preset (see --list)")
    model: str | None = option(None, "a model directory or hub id (weights are not loaded)")
    list: bool = option(False, "list the presets")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, InfoOptions)
    p.epilog = "Give exactly one of --preset, --model and --list."


def run(args: argparse.Namespace) -> int:
    from gpt124m.config import PRESETS, describe, get_preset

    args = from_args(args, InfoOptions)
    if sum((args.preset is not None, args.model is not None, args.list)) != 1:
        raise ValueError("give exactly one of --preset, --model and --list")
    if args.list:
        for name, preset in PRESETS.items():
            summary = preset.description.split(". ")[0]
            print(f"{name:<12} {preset.config.num_params():>17,}  {summary}")
        return 0
    if args.preset:
        config = get_preset(args.preset)
        print(f"preset: {args.preset}\n{PRESETS[args.preset].description}")
    else:
        from gpt124m.loading import model_config

        config = model_config(args.model)
        print(f"model: {args.model}")
    print(describe(config))
    return 0
