"""Relaunch a verb through `accelerate launch` (several processes, DeepSpeed, GPUs)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from draftheads.scripts.recipe_args import recipe_and_overrides
from draftheads.utils.errors import ConfigError
from draftheads.utils.paths import accelerate_config_path, recipes_dir


def add_launch_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--accelerate-config NAME` (and the hidden flag the relaunched processes get)."""
    parser.add_argument(
        "--accelerate-config",
        metavar="NAME",
        help=f"{what} under `accelerate launch` with this config: a shipped name (cpu, cpu-2proc, single-gpu, "
        "multi-gpu, deepspeed-zero2, deepspeed-zero3, fsdp) or a YAML path; without it, run in this process",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


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
        if _distributed_type(config) == "FSDP":
            # accelerate maps a CPU launch of FSDP to plain DDP (with use_cpu) or to unconnected
            # single processes (without): either way nothing would be sharded.
            raise ConfigError(
                f"--accelerate-config {args.accelerate_config}: accelerate runs FSDP on GPUs only; on CPU use deepspeed-zero3, "
                "which shards a frozen backbone's layers and the heads the same way"
            )
        if not uses_deepspeed(config):
            # Without CUDA, accelerate runs several processes only as "multi-GPU" with use_cpu set;
            # it must not be set for DeepSpeed, which it would silently turn into plain DDP
            # (DeepSpeed runs on CPU through its own CPU accelerator).
            env["ACCELERATE_USE_CPU"] = "true"
    else:
        command += _gpu_processes(config, torch.cuda.device_count())
    return command + ["-m", "draftheads.scripts.cli", verb, "--in-process", *forwarded], env


def uses_deepspeed(config: Path) -> bool:
    """Whether an accelerate config launches DeepSpeed."""
    return _distributed_type(config) == "DEEPSPEED"


def _distributed_type(config: Path) -> str:
    return (yaml.safe_load(config.read_text()) or {}).get("distributed_type", "NO")


def _gpu_processes(config: Path, gpus: int) -> list[str]:
    """`--num_processes` set to the GPUs present: a shipped multi-process config means one process
    per GPU, whatever its file says (2, so that it runs over gloo on a CPU-only machine); any other
    config is lowered to the GPUs present when it asks for more, since a process without a GPU dies
    on its first barrier ("invalid device ordinal")."""
    settings = yaml.safe_load(config.read_text()) or {}
    asked = settings.get("num_processes", 1)
    # CPU configs, one process, and several machines (num_processes counts all of them) are taken as written
    if (
        settings.get("use_cpu")
        or settings.get("num_machines", 1) > 1
        or settings.get("distributed_type", "NO") == "NO"
        or not isinstance(asked, int)
    ):
        return []
    shipped = config.resolve().parent == (recipes_dir() / "accelerate").resolve()
    if asked == gpus or (asked < gpus and not shipped):
        return []
    print(f"{config.name}: num_processes {asked} set to the {gpus} GPU(s) present", file=sys.stderr)
    return ["--num_processes", str(gpus)]


def relaunch(args: argparse.Namespace, verb: str) -> int:
    """Run the job under accelerate and return its exit status."""
    command, env = launch_command(args, verb)
    return subprocess.run(command, env=env).returncode
