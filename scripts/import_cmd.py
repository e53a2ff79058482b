"""`draftheads import {medusa,eagle} SRC --out DIR [--base SPEC]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `import`."""
    from draftheads.models.formats import FORMATS

    parser.add_argument("format", choices=sorted(FORMATS), help="; ".join(f"{k}: {v.description}" for k, v in FORMATS.items()))
    parser.add_argument("source", metavar="SRC", help="the checkpoint: a local folder or a Hub repository id")
    parser.add_argument("--out", required=True, help="heads folder to write (replaced atomically)")
    parser.add_argument("--base", help="base model (default: the checkpoint's base_model_name_or_path)")
    parser.add_argument("--num-heads", type=int, help="formats without a depth of their own (eagle): draft depth (default 5)")
    parser.add_argument(
        "--fuse-layers", type=int, nargs=3, metavar="LAYER", help="eagle-3: fused layers (default: as the reference reads them)"
    )


def run(args: argparse.Namespace) -> int:
    """Convert the checkpoint and print where the heads went; options a format does not take are
    refused by its importer."""
    from draftheads.models.formats import get_format

    options = {k: v for k, v in (("num_heads", args.num_heads), ("fuse_layers", args.fuse_layers)) if v is not None}
    draft = get_format(args.format).load("importer")(args.source, args.out, base=args.base, **options)
    config = draft.heads.config
    print(f"imported {config.head_type} heads ({config.num_heads} deep) for {config.base.model} into {args.out}")
    return 0
