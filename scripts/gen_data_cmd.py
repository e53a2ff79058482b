"""`draftheads gen-data RECIPE [key=value ...] [--out DIR] [--backend hf|openai] [--accelerate-config NAME]`."""

from __future__ import annotations

import argparse

from draftheads.scripts.launch import add_launch_arguments, relaunch
from draftheads.scripts.recipe_args import add_recipe_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gen-data`."""
    add_recipe_arguments(parser, sources_key="distill.sources")
    parser.add_argument("--out", help="output folder (sets distill.output_dir)")
    parser.add_argument("--backend", choices=("hf", "openai"), help="sets distill.backend")
    parser.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (sets distill.openai.base_url)")
    add_launch_arguments(parser, "generate")


def _with_flags(args: argparse.Namespace) -> argparse.Namespace:
    """Fold the gen-data flags into the overrides, so a relaunch forwards them too."""
    extra = []
    if args.out:
        extra.append(f"distill.output_dir={args.out}")
    if args.backend:
        extra.append(f"distill.backend={args.backend}")
    if args.base_url:
        extra.append(f"distill.openai.base_url={args.base_url}")
    args.items = list(args.items) + extra
    args.out = args.backend = args.base_url = None
    return args


def run(args: argparse.Namespace) -> int:
    """Generate in this process, or relaunch through accelerate."""
    args = _with_flags(args)
    if args.accelerate_config and not args.in_process:
        return relaunch(args, "gen-data")
    from draftheads.data.distill import run_distill
    from draftheads.data.sources import dropped_note
    from draftheads.scripts.recipe_args import recipe_from_args

    result = run_distill(recipe_from_args(args))
    if not result.main_process:
        return 0
    print(f"this run: {result.generated_records} conversations, {result.generated_tokens} answer tokens in "
          f"{result.seconds:.1f} s ({result.tokens_per_s:.1f} tokens/s)")
    counts = result.counts
    note = dropped_note(counts["dropped"])
    if note:
        print(f"warning: {note}")
    if not result.complete:
        print(f"{counts['missing']} of {counts['inputs']} inputs are not done yet: run the same command again to finish")
        return 1
    skipped = ", ".join(f"{n} {why}" for why, n in counts["skipped"].items()) or "none"
    print(f"{counts['conversations']} of {counts['inputs']} conversations, {counts['answers']} answers "
          f"({counts['answer_tokens']} tokens; finish reasons {counts['finish_reasons']}); skipped: {skipped}")
    print(f"wrote {result.output_dir / 'data.jsonl'} and metadata.json")
    if counts.get("not_reached"):
        print(f"time budget (distill.max_minutes) reached: data.jsonl holds the {counts['inputs'] - counts['not_reached']} of "
              f"{counts['inputs']} inputs answered so far; run the same command again to continue")
    return 0
