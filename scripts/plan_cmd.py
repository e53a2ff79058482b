"""`draftheads plan RECIPE [key=value ...] [--gpus N] [--gpu-memory GB] [--accelerate-config NAME]`."""

from __future__ import annotations

import argparse

from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_and_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `plan`."""
    add_recipe_arguments(parser)
    parser.add_argument(
        "--accelerate-config", metavar="NAME", help="the launch to plan for: a shipped config name or a YAML path (default: one process)"
    )
    parser.add_argument("--gpus", type=int, help="processes, one per GPU (default: the config's num_processes)")
    parser.add_argument(
        "--gpu-memory", type=float, metavar="GB", help="memory per GPU in GiB: a plan that does not fit is refused (exit 2)"
    )
    parser.add_argument(
        "--tflops", type=float, help="sustained TFLOP/s per GPU for the time estimate (default: 400, about 40%% of an H100's bf16 peak)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the plan; refuse one that does not fit."""
    from draftheads.train.plan import DEFAULT_TFLOPS, launch_of, make_plan, plan_lines
    from draftheads.utils.errors import ConfigError

    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise ConfigError(f"--gpu-memory must be positive, got {args.gpu_memory}")
    if args.tflops is not None and args.tflops <= 0:
        raise ConfigError(f"--tflops must be positive, got {args.tflops}")
    recipe, overrides = recipe_and_overrides(args)
    if recipe is None:
        raise ConfigError("plan needs a recipe file")
    plan = make_plan(recipe, overrides, launch_of(args.accelerate_config, args.gpus, args.gpu_memory))
    print("\n".join(plan_lines(plan, DEFAULT_TFLOPS if args.tflops is None else args.tflops)))
    refusal = plan.refusal()
    if refusal:
        raise ConfigError(refusal)
    return 0
