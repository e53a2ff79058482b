"""Claim: every head family, trained at the same data and budget on the demo model, decodes faster
than HF `generate` in bf16 on this CPU; one interleaved run gives each family's τ, time per step
(draft / verify), ours / our AR, ours / HF generate and ours / prompt lookup, with the tree `--tree
auto` chose for it from costs measured at start-up (and the lookup branch it chose with the tree,
for heads calibrated by `draftheads calibrate`).

    python bench/families.py [--run] [--only medusa1-distill hydra ...] [--limit 16] [--max-new-tokens 128]
    python bench/families.py --set quality --run --limit 80 [--out bench/out/families-auto]

`--set quality` takes the `*-quality` recipes (the quality budget: bench/RESULTS.md) instead of the
demo ones.

With `--run` it first trains each family's recipe that has no exported heads yet (timing it). The
decode run then loads the base model once, puts every family's heads on it (Medusa-2 brings its
own merged backbone and its own autoregressive reference) and runs, prompt by prompt and turn by
turn, our autoregressive decoding, HF `generate`, HF prompt lookup and every family's tree decoding,
all in the same dtype; every greedy token of every method is re-scored by the model in that dtype
and in fp32 (real mismatches apart from near ties, `decoding/verify.py`). It resumes from `bench/out/families/decode.partial.jsonl` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import subprocess
import time
from pathlib import Path

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.calibration import read_calibration
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.decoding.verify import near_tie_epsilon
from draftheads.eval.config import EvalConfig
from draftheads.eval.metrics import acceptance_by_depth, hardware, near_ties, predicted_tau, real_mismatches, tau_of, tokens_per_s, verification
from draftheads.eval.schema import SCHEMA_VERSION, MethodName
from draftheads.eval.report import write_summary
from draftheads.eval.prompts import load_prompts
from draftheads.eval.runner import Runner, engine_method, finished_prompts, hf_method, partial_lines, resolve_tree, run_prompts
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.hub import refresh_card
from draftheads.utils.device import resolve_dtype

# (label, recipe, output folder, extra overrides): Clover's recipe reads ShareGPT's original answers;
# here it reads the self-distilled data like the others.
DISTILLED = "data.sources=[{path: outputs/smollm2-135m-distill/data.jsonl}]"
FAMILIES = (
    ("Medusa-1", "medusa1-distill", "smollm2-135m-medusa1-distill", ()),
    ("Medusa-2 (LoRA)", "medusa2-lora", "smollm2-135m-medusa2-lora", ()),
    ("Hydra", "hydra", "smollm2-135m-hydra", ()),
    ("Hydra++", "hydra-plus", "smollm2-135m-hydra-plus", ()),
    ("Clover", "clover", "smollm2-135m-clover-distill", (DISTILLED,)),
    ("EAGLE-1", "eagle1", "smollm2-135m-eagle1", ()),
    ("EAGLE-3", "eagle3", "smollm2-135m-eagle3", ()),
)
QUALITY = (
    ("Medusa-1", "medusa1-quality", "smollm2-135m-medusa1-quality", ()),
    ("Hydra", "hydra-quality", "smollm2-135m-hydra-quality", ()),
    ("Clover", "clover-quality", "smollm2-135m-clover-quality", ()),
    ("EAGLE-3", "eagle3-quality", "smollm2-135m-eagle3-quality", ()),
)
SETS = {"demo": (FAMILIES, Path("bench/out/families")), "quality": (QUALITY, Path("bench/out/families-quality"))}


def train_missing(chosen, out: Path) -> None:
    times_path = out / "train_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for label, recipe, folder, extra in chosen:
        if (Path("outputs") / folder / "heads").is_dir():
            continue
        start = time.perf_counter()
        subprocess.run(["draftheads", "train", f"recipes/smollm2-135m/{recipe}.yaml", *extra, f"train.output_dir=outputs/{folder}"], check=True)
        times[label] = time.perf_counter() - start
        times_path.write_text(json.dumps(times, indent=2))


def load_family(folder: Path, base, dtype: str) -> DraftModel:
    """Heads on the shared base backbone, or (a trained backbone) with their own."""
    if (folder / "adapter").is_dir() or (folder / "backbone").is_dir():
        return DraftModel.from_pretrained(folder, device="cpu", dtype=dtype)
    return DraftModel.with_backbone(folder, base)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", action="store_true", help="train the families that have no heads yet")
    parser.add_argument("--only", nargs="*", help="recipes to include (default: all)")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--train-only", action="store_true", help="train the families that have no heads yet, then stop")
    parser.add_argument("--report-only", action="store_true", help="report the prompts a stopped run finished (no decoding)")
    parser.add_argument("--set", choices=sorted(SETS), default="demo", help="which recipes: the demo ones or the *-quality ones")
    parser.add_argument("--out", type=Path, help="where the run's records go (default: the set's folder under bench/out)")
    parser.add_argument("--cards", action=argparse.BooleanOptionalAction,
                        help="write each family's numbers into its heads folder (eval_report.json) and model card (default: only for a run in the set's folder)")
    args = parser.parse_args()
    families, out = SETS[args.set]
    args.cards = args.out is None if args.cards is None else args.cards
    out = args.out or out
    out.mkdir(parents=True, exist_ok=True)
    chosen = [f for f in families if not args.only or f[1] in args.only]
    if args.run or args.train_only:
        train_missing(chosen, out)
    if args.train_only:
        return
    dtype, note = resolve_dtype(args.dtype, torch.device("cpu"))
    print(f"dtype: {note}")
    if args.report_only:
        if not (out / "trees.json").is_file():
            raise SystemExit(f"{out / 'trees.json'}: no decode run has started with these recipes (run without --report-only)")
        trees = json.loads((out / "trees.json").read_text())
        records = finished_prompts(out / "decode", fingerprint_of(args, dtype, chosen, trees))
        if not records:
            raise SystemExit(f"{out / 'decode.partial.jsonl'}: no finished prompts of a run with these settings")
        print(f"{len(records)} prompts finished" + (" (the run was stopped early: it resumes with the same command)" if len(records) < args.limit else ""))
        report(chosen, records, trees, dtype, args, out)
        return
    base = load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype))
    eos = Engine(base).default_eos()
    methods = [engine_method(MethodName.AUTOREGRESSIVE, Engine(base)), hf_method(MethodName.HF_GENERATE, base, eos, None),
               hf_method(MethodName.HF_PROMPT_LOOKUP, base, eos, 10)]
    stopped = stopped_run_trees(out, args, dtype, chosen)
    trees = {}
    for label, recipe, folder, _ in chosen:
        draft = load_family(Path("outputs") / folder / "heads", base, dtype)
        if draft.backbone is not base:  # a trained backbone: its own autoregressive decoding is its baseline
            methods.append(engine_method(f"{MethodName.AUTOREGRESSIVE}:{recipe}", Engine(draft.backbone)))
        print(f"{label}:")
        tree = spec_of(stopped[recipe]) if stopped is not None else None
        if tree is not None:
            trees[recipe] = stopped[recipe]
            print(f"  resumed with the tree the stopped run began with: {tree.describe()}")
        else:  # a new run, or a tree saved with the heads (read again from them)
            tree, trees[recipe] = resolve_tree(EvalConfig(heads=str(draft.folder), max_new_tokens=args.max_new_tokens), draft, turns=2)  # MT-bench: 2 turns
        methods.append(engine_method(recipe, Engine(draft.backbone, draft.heads, tree)))
    assert [m.name for m in methods] == method_names(chosen)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, eos_token_ids=eos, seed=0)
    # Every token re-scored by the model its method decodes (a trained backbone's family by that backbone), and by its fp32 twin.
    runner = Runner(methods, ChatFormatter(base.tokenizer, model_name=base.location.spec), config, near_tie_epsilon(base.lm_head.weight.dtype), verify=True, verify_fp32=True)
    prompts = interleaved_categories(load_prompts("mt-bench", args.limit))
    fingerprint = fingerprint_of(args, dtype, chosen, trees)
    finished_prompts(out / "decode", fingerprint)  # refuses a stopped run with other trees before trees.json is replaced
    (out / "trees.json").write_text(json.dumps(trees) + "\n")  # what --report-only reads
    start = time.perf_counter()
    records = run_prompts(runner, prompts, out / "decode", fingerprint, 0, progress=True)
    print(f"decode run: {time.perf_counter() - start:.0f} s, {len(records)} prompts x {len(methods)} methods")
    (out / "decode.json").write_text(json.dumps({"trees": trees, "records": records}) + "\n")
    report(chosen, records, trees, dtype, args, out)


def stopped_run_trees(out: Path, args, dtype: str, chosen) -> dict | None:
    """The trees of a stopped run with these settings (trees.json, when decode.partial.jsonl was
    begun with them): a resumed run decodes with them again, since trees chosen anew from costs
    measured now could differ and the records would mix. None: no such run, choose anew."""
    if not (out / "trees.json").is_file():
        return None
    trees = json.loads((out / "trees.json").read_text())
    header, _ = partial_lines(out / "decode.partial.jsonl")
    if header.get("options") != fingerprint_of(args, dtype, chosen, trees):
        return None
    return trees


def spec_of(choice: dict) -> TreeSpec | None:
    """The tree a trees.json entry decoded with (None: a static tree saved with the heads, which
    the entry does not record)."""
    if "budget" not in choice:
        return None
    spec = TreeSpec("dynamic", budget=choice["budget"], width=choice["width"]) if choice["budget"] else TreeSpec("none")
    return dataclasses.replace(spec, lookup=choice.get("lookup", 0))  # the branch the auto tree chose with it


def fingerprint_of(args, dtype: str, chosen, trees: dict) -> str:
    """The settings a resumed run must share, the heads' weights included (retrained heads start a
    new run): a stopped run with other settings is refused by `run_prompts` (delete
    decode.partial.jsonl to start over)."""
    shapes = {recipe: {k: choice[k] for k in ("budget", "width", "paths", "lookup") if k in choice} for recipe, choice in sorted(trees.items())}
    weights = {recipe: weights_identity(Path("outputs") / folder / "heads") for _, recipe, folder, _ in chosen}
    # records 2: every token verified, τ on emitted tokens (runs stopped before that start over)
    return json.dumps(["records 2", args.limit, args.max_new_tokens, dtype, method_names(chosen), shapes, weights])


def weights_identity(folder: Path) -> str:
    """Size and modification time of every weights file under a heads folder (a trained backbone's
    too), hashed: retraining changes it, writing the heads' eval summary or card does not."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def method_names(chosen) -> list[str]:
    """The run's methods in order (a family with its own trained backbone brings its own AR)."""
    names = [MethodName.AUTOREGRESSIVE, MethodName.HF_GENERATE, MethodName.HF_PROMPT_LOOKUP]
    for _, recipe, folder, _ in chosen:
        heads = Path("outputs") / folder / "heads"
        if (heads / "adapter").is_dir() or (heads / "backbone").is_dir():
            names.append(f"{MethodName.AUTOREGRESSIVE}:{recipe}")
        names.append(recipe)
    return names


def predicted(folder: str, tree: dict, args) -> tuple[float | None, str | None]:
    """τ the heads' calibration.json predicts for the decoded tree, for a decode of 2 turns x
    max_new_tokens (as `draftheads eval` predicts it: the decode's steps replayed on calibration
    answers when the file keeps them, else held-out position frequencies), and where it comes from
    ((None, None): no tree, or no calibration)."""
    saved = read_calibration(Path("outputs") / folder / "heads", 2, args.max_new_tokens)
    spec = spec_of(tree)
    if saved is None or spec is None:
        return None, None
    tau, _, source = predicted_tau(spec, saved[0], saved, [], (2, args.max_new_tokens))
    return tau, source


def report(chosen, records: list[dict], trees: dict, dtype: str, args, out: Path) -> None:
    """The table, and each family's summary in its heads folder and model card."""
    times_path = SETS[args.set][1] / "train_seconds.json"  # written by the set's training, wherever this run's records go
    predictions = {recipe: predicted(folder, trees[recipe], args) for _, recipe, folder, _ in chosen}
    print_table(chosen, records, trees, json.loads(times_path.read_text()) if times_path.is_file() else {}, predictions, dtype)
    if not args.cards:
        return
    for label, recipe, folder, _ in chosen:
        heads = Path("outputs") / folder / "heads"
        write_summary(family_summary(records, recipe, trees[recipe], dtype, args, *predictions[recipe]), heads)
        refresh_card(heads)
        print(f"{label}: decoding numbers written to {heads / 'eval_report.json'} and its model card")


def interleaved_categories(prompts: list) -> list:
    """The prompts reordered round-robin over their categories, so a long run that is stopped early
    (it resumes) has covered every category evenly so far."""
    rank: dict[str, int] = {}
    keyed = []
    for index, prompt in enumerate(prompts):
        rank[prompt.category] = rank.get(prompt.category, -1) + 1
        keyed.append((rank[prompt.category], index, prompt))
    return [prompt for _, _, prompt in sorted(keyed, key=lambda k: k[:2])]


def family_summary(records: list[dict], recipe: str, tree: dict, dtype: str, args, tau_predicted: float | None, source: str | None) -> dict:
    """One family's numbers from this run, in the form of `draftheads eval`'s summary (the model
    card reads it)."""
    turns = [t for r in records for t in r["methods"][recipe]]
    accepted = [a for t in turns for a in t["accepted"]]
    ours = tokens_per_s(records, recipe)
    real, near = mismatches(records, recipe, dtype)
    return {
        "schema_version": SCHEMA_VERSION,
        "measured_by": f"`python bench/families.py --set {args.set} --limit {args.limit}{f' --out {args.out}' if args.out else ''}` (one interleaved run of every family)",
        "prompts": "mt-bench", "n_prompts": len(records), "n_turns": len(turns), "max_new_tokens": args.max_new_tokens,
        "temperature": 0.0, "dtype": dtype, "tree": {"kind": spec_of(tree).kind if spec_of(tree) else "static", **tree},
        "tau": tau_of(accepted), "tau_predicted": tau_predicted, "tau_predicted_source": source,
        "acceptance_by_depth": acceptance_by_depth(accepted, max(accepted, default=1)),
        "speedup": ours / tokens_per_s(records, MethodName.AUTOREGRESSIVE) if MethodName.AUTOREGRESSIVE in records[0]["methods"] else None,
        "speedup_vs_hf_generate": ours / tokens_per_s(records, MethodName.HF_GENERATE),
        "speedup_vs_prompt_lookup": ours / tokens_per_s(records, MethodName.HF_PROMPT_LOOKUP),
        "greedy_mismatches": real, "near_ties": near, "hardware": hardware(), "date": datetime.date.today().isoformat(),
    }


def mismatches(records: list[dict], method: str, dtype: str) -> tuple[int | None, int | None]:
    """Real mismatches and near ties of a method's tokens re-scored in the decode dtype."""
    table = verification(records, method, near_tie_epsilon(getattr(torch, dtype)))
    return real_mismatches(table, dtype), near_ties(table, dtype)


def print_table(chosen, records: list[dict], trees: dict, train_seconds: dict, predictions: dict, dtype: str) -> None:
    hf, lookup = tokens_per_s(records, MethodName.HF_GENERATE), tokens_per_s(records, MethodName.HF_PROMPT_LOOKUP)
    ar = tokens_per_s(records, MethodName.AUTOREGRESSIVE) if MethodName.AUTOREGRESSIVE in records[0]["methods"] else None
    print(f"HF generate {hf:.2f} tok/s, prompt lookup {lookup:.2f} tok/s" + (f", our AR {ar:.2f} tok/s (our AR / HF {ar / hf:.3f})" if ar else ""))
    print(
        "| heads | train min | tree (budget x width) | τ | τ predicted (error) | accepted per step by depth | draft ms / verify ms per step "
        "| ours / our AR | ours / HF generate | ours / prompt lookup | tokens re-scored: real mismatches / near ties |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, recipe, _, _ in chosen:
        turns = [t for r in records for t in r["methods"][recipe]]
        accepted = [a for t in turns for a in t["accepted"]]
        steps = max(len(accepted), 1)
        draft_ms = 1000 * sum(t["times"]["draft"] for t in turns) / steps
        verify_ms = 1000 * sum(t["times"]["verify"] for t in turns) / steps
        own = f"{MethodName.AUTOREGRESSIVE}:{recipe}"
        own_ar = tokens_per_s(records, own) if own in records[0]["methods"] else ar
        tree = trees[recipe]
        shape = f"{tree.get('budget')} x {tree.get('width')}" if "budget" in tree else tree["reason"]
        shape += f" + {tree['lookup']}-token lookup" if tree.get("lookup") else ""
        real, near = mismatches(records, recipe, dtype)
        ours = tokens_per_s(records, recipe)
        by_depth = " / ".join(f"{x:.3f}" for x in acceptance_by_depth(accepted, max(accepted, default=1)))
        minutes = f"{train_seconds[label] / 60:.1f}" if label in train_seconds else "n/a"
        versus_ar = f"{ours / own_ar:.2f}x" if own_ar else "n/a"
        tau, forecast = tau_of(accepted) or 1.0, predictions[recipe][0]
        forecast_text = f"{forecast:.3f} ({(forecast - tau) / tau:+.1%})" if forecast else "n/a"
        print(
            f"| {label} | {minutes} | {shape} | {tau:.3f} | {forecast_text} | {by_depth} | "
            f"{draft_ms:.1f} / {verify_ms:.1f} | {versus_ar} | {ours / hf:.2f}x | {ours / lookup:.2f}x | {real} / {near} |"
        )


if __name__ == "__main__":
    main()
