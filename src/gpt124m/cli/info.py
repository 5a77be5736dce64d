from __future__ import annotations

import argparse

NAME = "info"
HELP = "Show a preset's or model directory's config, parameter count and memory needs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="a named preset (see --list)")
    which.add_argument("--model", help="a model directory or hub id (weights are not loaded)")
    which.add_argument("--list", action="store_true", help="list the presets")


def run(args: argparse.Namespace) -> int:
    from gpt124m.config import PRESETS, describe, get_preset

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
