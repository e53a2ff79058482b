"""`draftheads train RECIPE [key=value ...] [--accelerate-config NAME]`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from draftheads.scripts.recipe_args import add_recipe_arguments, recipe_and_overrides, recipe_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `train`."""
    add_recipe_arguments(parser)
    parser.add_argument(
        "--accelerate-config",
        metavar="NAME",
        help="relaunch through `accelerate launch` with this config: a shipped name (cpu, cpu-2proc, single-gpu, "
        "multi-gpu, deepspeed-zero2, deepspeed-zero3, fsdp) or a YAML path; without it, train in this process",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name, or a path as given."""
    from draftheads.utils.errors import ConfigError

    path = Path(name)
    if path.is_file():
        return path
    shipped = resources.files("draftheads.recipes") / "accelerate" / f"{name}.yaml"
    if not shipped.is_file():
        known = sorted(p.name[:-5] for p in (resources.files("draftheads.recipes") / "accelerate").iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"--accelerate-config {name}: not a file and not a shipped config ({', '.join(known)})")
    return Path(str(shipped))


def launch_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that run this same job."""
    import torch

    recipe, overrides = recipe_and_overrides(args)
    forwarded = ([recipe] if recipe else []) + overrides
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_path(args.accelerate_config))]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # Without CUDA, accelerate runs several processes only as "multi-GPU" with use_cpu set.
        env["ACCELERATE_USE_CPU"] = "true"
    return command + ["-m", "draftheads.train", *forwarded], env


def run(args: argparse.Namespace) -> int:
    """Train in this process, or relaunch through accelerate."""
    if args.accelerate_config and not args.in_process:
        command, env = launch_command(args)
        return subprocess.run(command, env=env).returncode
    from draftheads.train.loop import train

    result = train(recipe_from_args(args))
    if result.main_process and result.history:
        first, final = result.history[0], result.history[-1]
        print("held-out top-1 accuracy by head (before -> after training):")
        for k, (a, b) in enumerate(zip(first["top1"], final["top1"])):
            print(f"  head {k + 1}: {a:.3f} -> {b:.3f}   (top-5 {final['top5'][k]:.3f})")
    return 0
