"""Relaunch a verb through `accelerate launch` (several processes, DeepSpeed, GPUs)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from draftheads.scripts.recipe_args import recipe_and_overrides


def add_launch_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--accelerate-config NAME` (and the hidden flag the relaunched processes get)."""
    parser.add_argument(
        "--accelerate-config",
        metavar="NAME",
        help=f"{what} under `accelerate launch` with this config: a shipped name (cpu, cpu-2proc, single-gpu, "
        "multi-gpu, deepspeed-zero2, deepspeed-zero3, fsdp) or a YAML path; without it, run in this process",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name, or a path as given."""
    from draftheads.utils.errors import ConfigError
    from draftheads.utils.paths import recipes_dir

    path = Path(name)
    if path.is_file():
        return path
    shipped = recipes_dir() / "accelerate" / f"{name}.yaml"
    if not shipped.is_file():
        known = sorted(p.stem for p in (recipes_dir() / "accelerate").glob("*.yaml"))
        raise ConfigError(f"--accelerate-config {name}: not a file and not a shipped config ({', '.join(known)})")
    return shipped


def launch_command(args: argparse.Namespace, verb: str) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that run this same job, every process
    running `draftheads VERB --in-process RECIPE OVERRIDES`."""
    import torch

    recipe, overrides = recipe_and_overrides(args)
    forwarded = ([recipe] if recipe else []) + overrides
    config = accelerate_config_path(args.accelerate_config)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # Without CUDA, accelerate runs several processes only as "multi-GPU" with use_cpu set.
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        command += _gpu_processes(config, torch.cuda.device_count())
    return command + ["-m", "draftheads.scripts.cli", verb, "--in-process", *forwarded], env


def _gpu_processes(config: Path, gpus: int) -> list[str]:
    """`--num_processes` lowered to the GPUs present when the config asks for more: a process per
    GPU is what the shipped multi-GPU configs mean, and a process without a GPU dies on its first
    barrier ("invalid device ordinal")."""
    settings = yaml.safe_load(config.read_text()) or {}
    asked = settings.get("num_processes", 1)
    # CPU configs and several machines (num_processes counts all of them) are taken as written
    if settings.get("use_cpu") or settings.get("num_machines", 1) > 1 or not isinstance(asked, int) or asked <= gpus:
        return []
    print(f"{config.name}: num_processes {asked} lowered to the {gpus} GPU(s) present", file=sys.stderr)
    return ["--num_processes", str(gpus)]


def relaunch(args: argparse.Namespace, verb: str) -> int:
    """Run the job under accelerate and return its exit status."""
    command, env = launch_command(args, verb)
    return subprocess.run(command, env=env).returncode
