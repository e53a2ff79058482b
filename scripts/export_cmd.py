"""`draftheads export FORMAT HEADS --out DIR [--dtype bf16|fp16|fp32] [--base SPEC]`."""

from __future__ import annotations

import argparse

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `export`."""
    from draftheads.models.formats import FORMATS

    parser.add_argument("format", choices=sorted(FORMATS), help="; ".join(f"{k}: {v.description}" for k, v in FORMATS.items()))
    parser.add_argument("heads", metavar="HEADS", help="a heads folder (or Hub id)")
    parser.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor dtype of the export")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")


def run(args: argparse.Namespace) -> int:
    """Export the heads and say where."""
    from draftheads.models.formats import export_heads

    out = export_heads(args.heads, args.format, args.out, DTYPES[args.dtype], args.base)
    print(f"exported {args.heads} as {args.format} ({args.dtype}) into {out}; serving commands in {out / 'README.md'}")
    return 0
