"""Claim: a prompt-lookup branch grafted onto the heads' tree (decoding/lookup.py) makes greedy
decoding faster than either the heads or prompt lookup alone, losslessly; one interleaved run, bf16.

    python bench/lookup_branch.py [--only hydra-quality ...] [--lookup 10] [--ngram 2] [--limit 80]

Methods, prompt by prompt and turn by turn on the MT-bench questions (spread over the categories,
both turns, 128 new tokens): HF `generate`, HF prompt lookup (10 tokens, its max n-gram 2), the
engine with the lookup branch alone (no heads), and for each chosen family its tree (the one the
family run decoded with: bench/out/families-quality/trees.json) with and without the branch.
Greedy outputs are checked against HF `generate` (near ties apart). The run resumes from
bench/out/lookup-branch/decode.partial.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.decoding.verify import near_tie_epsilon
from draftheads.eval.metrics import acceptance_by_depth, tau_of, tokens_per_s
from draftheads.eval.prompts import load_prompts
from draftheads.eval.runner import Runner, engine_method, finished_prompts, hf_method, run_prompts
from draftheads.eval.schema import MethodName
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.utils.device import resolve_dtype

from families import SETS, interleaved_categories, load_family, mismatches, spec_of, weights_identity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=["hydra-quality"], help="quality recipes whose heads get the branch")
    parser.add_argument("--lookup", type=int, default=10, help="most tokens the branch copies per step")
    parser.add_argument("--ngram", type=int, default=2, help="longest context suffix the lookup matches")
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--report-only", action="store_true", help="report the questions a stopped run finished (no decoding)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/lookup-branch"), help="where the run's records go")
    args = parser.parse_args()
    families, family_out = SETS["quality"]
    chosen = [f for f in families if f[1] in args.only]
    if len(chosen) != len(args.only):
        raise SystemExit(
            f"--only: not quality recipes: {sorted(set(args.only) - {f[1] for f in chosen})}; known: {[f[1] for f in families]}"
        )
    trees_path = family_out / "trees.json"
    if not trees_path.is_file():
        raise SystemExit(f"{trees_path}: run bench/families.py --set quality first (its trees are the ones compared here)")
    trees = json.loads(trees_path.read_text())
    dtype, note = resolve_dtype("auto", torch.device("cpu"))
    print(f"dtype: {note}")
    base = load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype))
    eos = Engine(base).default_eos()
    branch = {"lookup": args.lookup, "lookup_ngram": args.ngram}
    methods = [
        hf_method(MethodName.HF_GENERATE, base, eos, None),
        hf_method(MethodName.HF_PROMPT_LOOKUP, base, eos, 10),
        engine_method("lookup_only", Engine(base, tree=TreeSpec("none", **branch))),
    ]
    for _, recipe, folder, _ in chosen:
        draft = load_family(Path("outputs") / folder / "heads", base, dtype)
        tree = spec_of(trees.get(recipe, {}))
        if tree is None or draft.backbone is not base:
            raise SystemExit(f"{recipe}: this bench takes heads on the shared base whose dynamic tree {trees_path} records")
        methods.append(engine_method(recipe, Engine(base, draft.heads, dataclasses.replace(tree, lookup=0))))  # the tree alone
        methods.append(engine_method(f"{recipe}+lookup", Engine(base, draft.heads, dataclasses.replace(tree, **branch))))
    shapes = {recipe: trees[recipe] for _, recipe, _, _ in chosen}
    fingerprint = json.dumps(["records 2", args.limit, args.max_new_tokens, dtype, [m.name for m in methods], branch,
                              {r: [t["budget"], t["width"]] for r, t in sorted(shapes.items())},
                              {recipe: weights_identity(Path("outputs") / folder / "heads") for _, recipe, folder, _ in chosen}])
    if args.report_only:
        records = finished_prompts(args.out / "decode", fingerprint)
        if not records:
            raise SystemExit(f"{args.out / 'decode.partial.jsonl'}: no finished questions of a run with these settings")
        print(
            f"{len(records)} questions finished"
            + (" (the run was stopped early: it resumes with the same command)" if len(records) < args.limit else "")
        )
        print_table([m.name for m in methods[2:]], records, shapes, dtype)
        return
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, eos_token_ids=eos, seed=0)
    runner = Runner(
        methods,
        ChatFormatter(base.tokenizer, model_name=base.location.spec),
        config,
        near_tie_epsilon(base.lm_head.weight.dtype),
        verify=True,
        verify_fp32=True,
    )
    prompts = interleaved_categories(load_prompts("mt-bench", args.limit))
    args.out.mkdir(parents=True, exist_ok=True)
    records = run_prompts(runner, prompts, args.out / "decode", fingerprint, 0, progress=True)
    (args.out / "decode.json").write_text(json.dumps({"branch": branch, "trees": shapes, "records": records}) + "\n")
    print_table([m.name for m in methods[2:]], records, shapes, dtype)


def print_table(names: list[str], records: list[dict], shapes: dict, dtype: str) -> None:
    hf, lookup = tokens_per_s(records, MethodName.HF_GENERATE), tokens_per_s(records, MethodName.HF_PROMPT_LOOKUP)
    print(f"{len(records)} questions; HF generate {hf:.2f} tok/s, HF prompt lookup {lookup:.2f} tok/s ({lookup / hf:.2f}x HF generate)")
    print("| method | tree | τ | τ turn 1 / turn 2 | accepted per step by depth (1-4) | longest accepted | verified nodes per step "
          "| ours / HF generate | ours / HF prompt lookup | tokens re-scored: real mismatches / near ties |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        turns = [t for r in records for t in r["methods"][name]]
        accepted = [a for t in turns for a in t["accepted"]]
        nodes = sum(s for t in turns for s in t["tree_sizes"]) / max(len(accepted), 1)
        recipe = name.removesuffix("+lookup")
        tree = f"{shapes[recipe]['budget']} x {shapes[recipe]['width']}" if recipe in shapes else "none"
        by_depth = " / ".join(f"{x:.3f}" for x in acceptance_by_depth(accepted, 4))
        real, near = mismatches(records, name, dtype)
        ours = tokens_per_s(records, name)
        by_turn = " / ".join(f"{tau_of([a for r in records for a in r['methods'][name][k]['accepted']]):.3f}" for k in (0, 1))
        print(
            f"| {name} | {tree} | {tau_of(accepted):.3f} | {by_turn} | {by_depth} | {max(accepted, default=0)} | {nodes:.1f} | "
            f"{ours / hf:.2f}x | {ours / lookup:.2f}x | {real} / {near} |"
        )


if __name__ == "__main__":
    main()
