"""`draftheads <verb>`: a dispatch table over small verb modules.

Each verb module has `add_arguments(parser)` (cheap: argparse only, so `--help` is fast) and
`run(args) -> int` (imports the heavy parts). Errors caused by user input (`DraftheadsError`) are
printed as one clear message with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from draftheads.utils.errors import DraftheadsError


@dataclass(frozen=True)
class Verb:
    """One command: its words on the command line, the module implementing it, a one-line summary."""

    words: tuple[str, ...]
    module: str
    summary: str


VERBS = (
    Verb(("data", "inspect"), "draftheads.scripts.data_inspect", "print a tokenised row with its loss mask, and dataset statistics"),
    Verb(
        ("gen-data",),
        "draftheads.scripts.gen_data_cmd",
        "make self-distillation data: the base model answers the prompts itself (resumable)",
    ),
    Verb(
        ("cache-features",),
        "draftheads.scripts.cache_features_cmd",
        "run the frozen backbone once over a recipe's data and store the features its heads train on",
    ),
    Verb(("train",), "draftheads.scripts.train_cmd", "train draft heads from a recipe (in this process, or through accelerate launch)"),
    Verb(
        ("plan",),
        "draftheads.scripts.plan_cmd",
        "what a recipe needs per process under a launch: memory by term, compute, cache disk (refuses one that does not fit)",
    ),
    Verb(("import",), "draftheads.scripts.import_cmd", "convert FasterDecoding Medusa or SafeAILab EAGLE checkpoints into a heads folder"),
    Verb(
        ("export",),
        "draftheads.scripts.export_cmd",
        "write heads in the layouts serving engines load (eagle: SGLang/vLLM; medusa: TensorRT-LLM, Medusa)",
    ),
    Verb(("push",), "draftheads.scripts.push_cmd", "upload exported heads and their model card to the Hugging Face Hub"),
    Verb(
        ("eval",),
        "draftheads.scripts.eval_cmd",
        "measure acceptance length and speedup of heads against autoregressive decoding and HF generate",
    ),
    Verb(
        ("calibrate",),
        "draftheads.scripts.calibrate_cmd",
        "measure the heads' acceptance on the base model's answers to prompts like the served ones (calibration.json)",
    ),
    Verb(("tree",), "draftheads.scripts.tree_cmd", "choose the static draft tree with the best expected speedup on this machine"),
    Verb(("config",), "draftheads.scripts.config_show", "print a recipe resolved with its defaults and overrides"),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subcommand (or group of subcommands) per verb."""
    parser = argparse.ArgumentParser(prog="draftheads", description="Train, evaluate and publish speculative-decoding draft heads.")
    groups = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for verb in VERBS:
        head, *rest = verb.words
        if not rest:
            sub = groups.add_parser(head, help=verb.summary, description=verb.summary)
        else:
            if head not in nested:
                group = groups.add_parser(head, help=f"{head} commands")
                nested[head] = group.add_subparsers(dest=f"{head}_verb", metavar="VERB", required=True)
            sub = nested[head].add_parser(rest[0], help=verb.summary, description=verb.summary)
        importlib.import_module(verb.module).add_arguments(sub)
        sub.set_defaults(verb_module=verb.module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `draftheads` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a `*` positional before the options that follow it, so `RECIPE --out DIR
    # key=value` leaves the override over: take such words as overrides, refuse anything else.
    overrides = [word for word in extra if "=" in word and not word.startswith("-")]
    if len(overrides) < len(extra) or (overrides and not hasattr(args, "items")):
        parser.error("unrecognized arguments: " + " ".join(extra))
    if overrides:
        args.items = list(args.items) + overrides
    try:
        return importlib.import_module(args.verb_module).run(args) or 0
    except DraftheadsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
