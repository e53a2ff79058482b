"""`draftheads calibrate --heads DIR --prompts FILE [--limit N]`: measure the heads' acceptance
statistics on the base model's own answers to prompts like the ones they will serve, and save them
as the heads' calibration.json (what `draftheads eval` predicts τ from and `--tree auto` uses)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `calibrate`."""
    parser.add_argument("--heads", required=True, help="a heads folder (or Hub id, with --out)")
    parser.add_argument(
        "--prompts",
        required=True,
        help="prompts like the served ones: MT-bench-style question.jsonl, ShareGPT file, JSONL with 'prompt' (never the eval's own)",
    )
    parser.add_argument("--limit", type=int, help="N prompts, spread over the set's categories (default: all)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens the base model answers each turn with (as the decode will: default 128)"
    )
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: bf16 where the hardware computes it natively (as eval), else fp32",
    )
    parser.add_argument(
        "--out",
        help="calibration file to write (default: the heads' calibration.json; the replaced one is kept as calibration.previous.json)",
    )
    parser.add_argument(
        "--answers", help="where the base model's answers are kept, resumable (default: beside --out, <name>-answers.partial.jsonl)"
    )


def run(args: argparse.Namespace) -> int:
    """Answer, measure, save."""
    from draftheads.eval.calibrate import calibrate

    calibrate(
        heads=args.heads, prompts=args.prompts, limit=args.limit, max_new_tokens=args.max_new_tokens, base=args.base,
        device=args.device, dtype=args.dtype, out=args.out, answers=args.answers,
    )
    return 0
