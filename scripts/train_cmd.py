"""`draftheads train RECIPE [key=value ...] [--accelerate-config NAME]`."""

from __future__ import annotations

import argparse

from draftheads.scripts.launch import add_launch_arguments, relaunch
from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `train`."""
    add_recipe_arguments(parser)
    add_launch_arguments(parser, "train")


def run(args: argparse.Namespace) -> int:
    """Train in this process, or relaunch through accelerate."""
    if args.accelerate_config and not args.in_process:
        return relaunch(args, "train")
    from draftheads.train.loop import train

    result = train(recipe_from_args(args))
    if result.main_process:
        print("\n".join(result.summary_lines()))
    return 0
