"""`draftheads export FORMAT HEADS --out DIR [--dtype bf16|fp16|fp32] [--base SPEC] [--engine all|vllm|sglang|reference|trtllm]`."""

from __future__ import annotations

import argparse

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `export`."""
    from draftheads.models.engines import ALL, ENGINES
    from draftheads.models.formats import FORMATS

    parser.add_argument("format", choices=sorted(FORMATS), help="; ".join(f"{k}: {v.description}" for k, v in FORMATS.items()))
    parser.add_argument("heads", metavar="HEADS", help="a heads folder (or Hub id)")
    parser.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor dtype of the export")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument("--engine", choices=(ALL, *ENGINES), default=ALL,
                        help="the engine to load the export (all: every engine that loads the layout; models/engines.py lists where they differ)")


def run(args: argparse.Namespace) -> int:
    """Export the heads and say where."""
    from draftheads.models.formats import export_heads

    out = export_heads(args.heads, args.format, args.out, DTYPES[args.dtype], args.base, args.engine)
    print(f"exported {args.heads} as {args.format} ({args.dtype}, for {args.engine}) into {out}; serving commands in {out / 'README.md'}")
    return 0
