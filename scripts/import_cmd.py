"""`draftheads import {medusa,eagle} SRC --out DIR [--base SPEC]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `import`."""
    parser.add_argument("format", choices=("medusa", "eagle"), help="medusa: FasterDecoding Medusa-1; eagle: SafeAILab EAGLE-1 or EAGLE-3")
    parser.add_argument("source", metavar="SRC", help="the checkpoint: a local folder or a Hub repository id")
    parser.add_argument("--out", required=True, help="heads folder to write (replaced atomically)")
    parser.add_argument("--base", help="base model (default: the checkpoint's base_model_name_or_path)")
    parser.add_argument("--num-heads", type=int, help="eagle: draft depth (default 5)")
    parser.add_argument("--fuse-layers", type=int, nargs=3, metavar="LAYER", help="eagle-3: fused layers (default: as the reference reads them)")


def run(args: argparse.Namespace) -> int:
    """Convert the checkpoint and print where the heads went."""
    if args.format == "medusa":
        from draftheads.models.import_medusa import import_medusa
        from draftheads.utils.errors import ConfigError

        if args.num_heads is not None or args.fuse_layers:
            raise ConfigError("--num-heads and --fuse-layers apply to eagle checkpoints; a Medusa checkpoint has its own heads")

        draft = import_medusa(args.source, args.out, args.base)
    else:
        from draftheads.models.import_eagle import import_eagle

        draft = import_eagle(args.source, args.out, args.base, 5 if args.num_heads is None else args.num_heads, args.fuse_layers)
    config = draft.heads.config
    print(f"imported {config.head_type} heads ({config.num_heads} deep) for {config.base.model} into {args.out}")
    return 0
