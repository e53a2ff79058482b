"""`draftheads cache-features RECIPE [key=value ...]`: run the frozen backbone once over the recipe's
data and store the features its heads read; training with the same recipe then reads them."""

from __future__ import annotations

import argparse

from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `cache-features`."""
    add_recipe_arguments(parser)
    parser.add_argument("--out", help="cache folder (sets data.feature_cache.path)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    """Build (or finish building) the cache."""
    from draftheads.data.features import build_feature_cache

    if args.out:
        args.items = list(args.items) + [f"data.feature_cache.path={args.out}"]
    recipe = recipe_from_args(args)
    folder = build_feature_cache(recipe, device=args.device)
    print(f"wrote {folder}; train from it with: draftheads train RECIPE data.feature_cache.path={folder}")
    return 0
