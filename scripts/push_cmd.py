"""`draftheads push DIR REPO_ID [--private]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `push`."""
    parser.add_argument("folder", metavar="DIR", help="an exported heads folder (config.json + model.safetensors)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, e.g. my-org/smollm2-135m-medusa")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", help="commit message")
    parser.add_argument(
        "--format",
        default="draftheads",
        help="draftheads (default: the heads folder as it is), or a serving layout: eagle, medusa (exported first)",
    )
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32", help="tensor dtype of an exported layout")
    parser.add_argument("--engine", default="all", help="an exported layout's target engine, as `draftheads export --engine`")


def run(args: argparse.Namespace) -> int:
    """Upload the heads with a freshly generated model card."""
    from draftheads.models.hub import push_export, push_heads

    if args.format == "draftheads":
        url = push_heads(args.folder, args.repo_id, args.private, args.message)
    else:
        from draftheads.scripts.export_cmd import DTYPES

        url = push_export(args.folder, args.format, args.repo_id, DTYPES[args.dtype], args.private, args.message, args.engine)
    print(f"uploaded: {url}")
    return 0
