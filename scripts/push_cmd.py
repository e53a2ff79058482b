"""`draftheads push DIR REPO_ID [--private]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `push`."""
    parser.add_argument("folder", metavar="DIR", help="an exported heads folder (config.json + model.safetensors)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, e.g. my-org/smollm2-135m-medusa")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", help="commit message")


def run(args: argparse.Namespace) -> int:
    """Upload the heads with a freshly generated model card."""
    from draftheads.models.hub import push_heads

    print(f"uploaded: {push_heads(args.folder, args.repo_id, args.private, args.message)}")
    return 0
