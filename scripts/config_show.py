"""`draftheads config [RECIPE] [key=value ...] [--save DIR]`."""

from __future__ import annotations

import argparse

from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `config`."""
    add_recipe_arguments(parser)
    parser.add_argument("--save", metavar="DIR", help="also write the resolved recipe to DIR/recipe.yaml")


def run(args: argparse.Namespace) -> int:
    """Print the resolved recipe (every default filled in) and optionally save it."""
    from draftheads.train.config import recipe_yaml, save_resolved

    recipe = recipe_from_args(args)
    print(recipe_yaml(recipe), end="")
    if args.save:
        print(f"# saved to {save_resolved(recipe, args.save)}")
    return 0
