"""Claim: the τ that training's held-out calibration predicts for a tree is the τ a decode measures,
for static trees as well as dynamic ones (issue 17: within 5%).

    python bench/tau_prediction.py [--set quality] [--limit 16] [--budget 8 --width 4] [--prompts unseen-sharegpt]

For each family's heads (the same sets as bench/families.py), in the decode dtype: the static tree
of the `budget` most frequent held-out rank paths over all positions (at most `width` per depth)
and the dynamic tree of the same budget and width. Each is decoded greedily over the MT-bench
questions (spread over the categories, both turns) and its measured τ is printed beside two
predictions from `calibration.json`, which the decode never sees: from every held-out position,
and from those a decode of 2 turns x max-new-tokens drafts in (what `draftheads eval` uses).
Only τ is measured here, so the methods are not interleaved for timing.

`--prompts unseen-sharegpt` decodes ShareGPT conversations 300 onwards instead: the same source as
the training data (whose gen-data run answered the first 226), none of it trained on. A prediction
that holds there but not on MT-bench is off by the change of prompts, not by the tree model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.planning.search import expected_tau
from draftheads.decoding.planning.stats import read_calibration
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import Tree, TreeSpec
from draftheads.eval.metrics import tau_of
from draftheads.data.config import SourceConfig
from draftheads.data.sources import read_source
from draftheads.eval.prompts import EvalPrompt, load_prompts
from draftheads.eval.runner import Runner, engine_method, run_prompts
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.utils.device import resolve_dtype

from families import SETS, load_family

UNSEEN_SHAREGPT = 300
"""First ShareGPT conversation of `--prompts unseen-sharegpt` (the quality data answered 226)."""


def unseen_sharegpt(limit: int, first: int = UNSEEN_SHAREGPT, two_turns: bool = False) -> list[EvalPrompt]:
    """`limit` ShareGPT conversations from the `first` on, their first two user turns (as MT-bench
    has; with `two_turns`, only conversations that have two); records without a user turn, and
    turns over 3,000 characters (gen-data skips long prompts too), are passed over."""
    conversations, _ = read_source(SourceConfig(path="demo:sharegpt", limit=first + 4 * limit), require_assistant=False, skip_invalid=True)
    prompts = []
    for conv in conversations[first:]:
        turns = [m["content"] for m in conv.messages if m["role"] == "user"][:2]
        if turns and all(len(t) <= 3000 for t in turns[: 2 if two_turns else 1]) and (len(turns) == 2 or not two_turns):
            prompts.append(EvalPrompt(conv.id, "sharegpt", turns))
    return prompts[:limit]


def trees_for(whole, shaped, budget: int, width: int) -> dict[str, tuple[TreeSpec, float, float]]:
    """The static tree of the `budget` most frequent held-out rank paths over all positions (at most
    `width` per depth) and the dynamic tree of the same budget and width, each with its τ predicted
    from every held-out position (`whole`) and from those a decode of this shape drafts in (`shaped`)."""
    paths = whole.best_paths(budget, width)
    static = Tree.from_paths(paths)
    return {
        "static": (TreeSpec("static", paths=paths), whole.expected_tau(static), shaped.expected_tau(static)),
        "dynamic": (
            TreeSpec("dynamic", budget=budget, width=width),
            expected_tau(whole, budget, width),
            expected_tau(shaped, budget, width),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=sorted(SETS), default="quality")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", choices=["mt-bench", "unseen-sharegpt"], default="mt-bench")
    args = parser.parse_args()
    families, out = SETS[args.set]
    dtype, note = resolve_dtype(args.dtype, torch.device("cpu"))
    print(f"dtype: {note}")
    base = load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype))
    methods, predicted, trees = [], {}, {}
    for label, recipe, folder, _ in families:
        draft = load_family(Path("outputs") / folder / "heads", base, dtype)
        whole = read_calibration(draft.folder)
        if whole is None:
            raise SystemExit(f"{draft.folder}: no calibration.json (train the heads with draftheads train)")
        shaped, source = read_calibration(draft.folder, 2, args.max_new_tokens)  # both prompt sets are decoded 2 turns deep
        print(f"{label}: calibration {source}")
        for kind, (tree, tau_all, tau_shaped) in trees_for(whole[0], shaped, args.budget, args.width).items():
            name = f"{recipe}:{kind}"
            methods.append(engine_method(name, Engine(draft.backbone, draft.heads, tree)))
            predicted[name] = (label, kind, tau_all, tau_shaped)
            trees[name] = tree.paths or [tree.budget, tree.width]
    eos = Engine(base).default_eos()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, eos_token_ids=eos, seed=0)
    runner = Runner(methods, ChatFormatter(base.tokenizer, model_name=base.location.spec), config, 0.0)
    fingerprint = json.dumps(
        ["records 2", args.limit, args.max_new_tokens, dtype, args.budget, args.width, [m.name for m in methods], sorted(trees.items())]
    )
    if args.prompts == "mt-bench":
        prompts = load_prompts("mt-bench", args.limit)
    else:
        prompts = unseen_sharegpt(args.limit)
    records = run_prompts(runner, prompts, out / f"tau_prediction-{args.prompts}", fingerprint, 0, progress=True)
    print(
        f"\n{len(records)} {args.prompts} conversations, both turns, {args.max_new_tokens} new tokens, greedy, {dtype}, "
        f"budget {args.budget} x width {args.width}"
    )
    print("| heads | tree | τ measured | τ predicted: all held-out positions | τ predicted: the positions this decode drafts in |")
    print("| --- | --- | --- | --- | --- |")
    for name, (label, kind, tau_all, tau_shaped) in predicted.items():
        measured = tau_of([a for r in records for t in r["methods"][name] for a in t["accepted"]]) or 1.0
        print(
            f"| {label} | {kind} | {measured:.3f} | {tau_all:.3f} ({(tau_all - measured) / measured:+.1%}) | "
            f"{tau_shaped:.3f} ({(tau_shaped - measured) / measured:+.1%}) |"
        )


if __name__ == "__main__":
    main()
