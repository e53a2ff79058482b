"""`accelerate launch -m draftheads.train RECIPE [key=value ...]`: one training process, started by
accelerate (the `draftheads train` CLI adds quick flags and relaunching on top of the same call)."""

from __future__ import annotations

import sys

from draftheads.train.config import load_recipe
from draftheads.train.loop import train
from draftheads.utils.errors import DraftheadsError


def main(argv: list[str]) -> int:
    """Train the recipe named in `argv` with its `key=value` overrides."""
    recipes = [word for word in argv if "=" not in word]
    if len(recipes) > 1 or any(word.startswith("-") for word in recipes):
        print(f"usage: accelerate launch -m draftheads.train RECIPE [key=value ...] (got {' '.join(argv)})", file=sys.stderr)
        return 2
    try:
        result = train(load_recipe(recipes[0] if recipes else None, [word for word in argv if "=" in word]))
    except DraftheadsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.main_process:
        print("\n".join(result.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
