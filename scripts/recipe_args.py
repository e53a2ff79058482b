"""Command-line arguments shared by every verb that reads a recipe."""

from __future__ import annotations

import argparse
import json

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from draftheads.train.config import Recipe


def add_recipe_arguments(parser: argparse.ArgumentParser, sources_key: str = "data.sources") -> None:
    """`[RECIPE] [key.sub=value ...]` plus quick flags for the base model and data (`--data` sets
    `sources_key`: the training data, or the prompts of gen-data)."""
    parser.set_defaults(sources_key=sources_key)
    parser.add_argument(
        "items",
        nargs="*",
        metavar="RECIPE | key=value",
        help="a recipe (a YAML path, or a shipped name like smollm2-135m/data), then overrides such as "
        "data.max_length=512 data.sources.0.limit=100",
    )
    parser.add_argument("--base", help="base model: Hub id, folder, .gguf file or demo:smollm2-135m (sets model.base)")
    parser.add_argument(
        "--data", action="append", metavar="PATH", help=f"data source, repeatable (replaces {sources_key}); demo:sharegpt, demo:mt-bench"
    )
    parser.add_argument("--limit", type=int, help="keep at most this many conversations per source")


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The recipe named on the command line and every override, the quick flags included (as
    overrides, so they are type-checked like everything else and can be handed to a relaunch)."""
    from draftheads.train.config import load_recipe  # imports torch: not needed for --help

    recipes = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if len(recipes) > 1:
        raise SystemExit(f"error: one recipe at most, got {', '.join(recipes)}")
    recipe = recipes[0] if recipes else None
    if args.base:
        overrides.append(f"model.base={json.dumps(args.base)}")
    key = getattr(args, "sources_key", "data.sources")
    if args.data:
        overrides.append(f"{key}=" + json.dumps([{"path": p} for p in args.data]))
    if args.limit is not None:
        # One override per source, so the sources (from the recipe or --data) must be known first.
        section, _ = key.split(".")
        count = len(getattr(load_recipe(recipe, overrides), section).sources)
        overrides += [f"{key}.{i}.limit={args.limit}" for i in range(count)]
    return recipe, overrides


def recipe_from_args(args: argparse.Namespace) -> "Recipe":
    """Resolve the recipe named on the command line, with flags and overrides applied."""
    from draftheads.train.config import load_recipe

    return load_recipe(*recipe_and_overrides(args))
