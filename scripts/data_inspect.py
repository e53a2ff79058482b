"""`draftheads data inspect [RECIPE] [key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys

from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `data inspect`."""
    add_recipe_arguments(parser)
    parser.add_argument("--show", type=int, default=1, metavar="N", help="which row to print (1-based; default 1)")
    parser.add_argument("--tokens", action="store_true", help="also print one line per token with its loss mask")
    parser.add_argument("--max-chars", type=int, default=4000, help="cut the printed row after this many characters")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="mark trained-on text in green")


def run(args: argparse.Namespace) -> int:
    """Build the dataset the recipe describes and print one row and the statistics."""
    from draftheads.data.inspect import inspect_data

    recipe = recipe_from_args(args)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    print(inspect_data(recipe, show=args.show, tokens=args.tokens, color=color, max_chars=args.max_chars))
    return 0
