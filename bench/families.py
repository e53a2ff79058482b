"""Claim: every head family, trained at the same data and budget on the demo model, decodes faster
than HF `generate` in bf16 on this CPU, and by how much over copying alone; one interleaved run
gives each family's τ (emitted tokens only), time per step (draft / verify), and its speed over our
autoregressive decoding, HF `generate`, HF prompt lookup at its best setting and our lookup alone at
its best, each ratio with a 95% bootstrap interval over prompts and repeats. Each family decodes
with the tree `--tree auto` chose for it from costs measured at start-up (and the lookup branch
it chose with the tree, for heads calibrated by `draftheads calibrate`).

    python bench/families.py [--run] [--only medusa1-distill hydra ...] [--limit 16] [--max-new-tokens 128]
    python bench/families.py --set quality --run --limit 80 [--out bench/out/families-auto] [--record NAME]
    python bench/families.py --set quality --limit 80 --prompts bench/data/humaneval_questions.jsonl --out bench/out/families-humaneval

`--set quality` takes the `*-quality` recipes (the quality budget: bench/RESULTS.md) instead of the
demo ones.

With `--run` it first trains each family's recipe that has no exported heads yet (timing it). The
decode run then sweeps the two lookup baselines on `--tune-prompts` (never the decoded prompts),
loads the base model once, puts every family's heads on it (Medusa-2 brings its own merged
backbone and its own autoregressive reference) and runs, prompt by prompt and turn by turn, our
autoregressive decoding, HF `generate`, both lookup baselines and every family's tree decoding,
`--repeats` times with the order rotated, all in the same dtype; every token every method emitted
is re-scored by the model in that dtype and in fp32 (real mismatches apart from near ties,
`decoding/verify.py`). It resumes from `<out>/decode.partial.jsonl` with the trees and lookup
settings it began with, prints the tables, and with `--record NAME` writes them as a record.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.planning.stats import read_calibration
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.decoding.verify import near_tie_epsilon
from draftheads.eval.baselines import lookup_methods, tune_baselines
from draftheads.eval.config import BaselineSettings, EvalConfig
from draftheads.eval.metrics import (ReportContext, acceptance_by_depth, near_ties, predicted_tau, real_mismatches, speed_ratio, tau_of,
                                     tokens_per_s, verification)
from draftheads.eval.schema import BASELINES, MethodName
from draftheads.eval.report import write_summary
from draftheads.eval.prompts import load_prompts
from draftheads.eval.runner import (Runner, engine_method, finished_prompts, hf_method, report_from_records, resolve_tree, resumed_header,
                                   run_prompts)
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.hub import refresh_card
from draftheads.utils.device import resolve_dtype
from records import Record, Table, markdown_table

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
TUNE_PROMPTS = "calibration"
"""Where the lookup baselines are swept by default: the written calibration questions (MT-bench's
categories, none of its questions)."""
SETS = {"demo": (FAMILIES, Path("bench/out/families")), "quality": (QUALITY, Path("bench/out/families-quality"))}


def train_missing(chosen, out: Path) -> None:
    times_path = out / "train_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for label, recipe, folder, extra in chosen:
        if (Path("outputs") / folder / "heads").is_dir():
            continue
        start = time.perf_counter()
        subprocess.run(
            ["draftheads", "train", f"recipes/smollm2-135m/{recipe}.yaml", *extra, f"train.output_dir=outputs/{folder}"], check=True
        )
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
    parser.add_argument(
        "--prompts",
        default="mt-bench",
        help="the prompt set decoded (mt-bench, or a question.jsonl such as bench/data/humaneval_questions.jsonl)",
    )
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved answers per method and prompt (the method order rotates)")
    parser.add_argument(
        "--tune-prompts", default=TUNE_PROMPTS, help="the prompts the lookup baselines are swept on (never the decoded ones)"
    )
    parser.add_argument("--tune-limit", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--train-only", action="store_true", help="train the families that have no heads yet, then stop")
    parser.add_argument("--report-only", action="store_true", help="report the prompts a stopped run finished (no decoding)")
    parser.add_argument("--set", choices=sorted(SETS), default="demo", help="which recipes: the demo ones or the *-quality ones")
    parser.add_argument("--out", type=Path, help="where the run's records go (default: the set's folder under bench/out)")
    parser.add_argument("--record", help="also write the tables as bench/records/NAME/record.json (bench/records.py renders them)")
    parser.add_argument(
        "--cards",
        action=argparse.BooleanOptionalAction,
        help="write each family's numbers into its heads folder (eval_report.json) and model card "
        "(default: only for a run in the set's folder)",
    )
    args = parser.parse_args()
    families, out = SETS[args.set]
    args.cards = args.out is None and args.prompts == "mt-bench" if args.cards is None else args.cards
    out = args.out or out
    out.mkdir(parents=True, exist_ok=True)
    chosen = [f for f in families if not args.only or f[1] in args.only]
    if args.run or args.train_only:
        train_missing(chosen, out)
    if args.train_only:
        return
    dtype, note = resolve_dtype(args.dtype, torch.device("cpu"))
    print(f"dtype: {note}")
    fingerprint = fingerprint_of(args, dtype, chosen)
    finished_prompts(out / "decode", fingerprint)  # a stopped run with other settings is refused before any start-up work
    stopped = resumed_header(out / "decode.partial.jsonl", fingerprint)  # {} when there is none
    if args.report_only:
        records = finished_prompts(out / "decode", fingerprint)
        if not records:
            raise SystemExit(f"{out / 'decode.partial.jsonl'}: no finished prompts of a run with these settings")
        print(
            f"{len(records)} prompts finished"
            + (" (the run was stopped early: it resumes with the same command)" if len(records) < args.limit else "")
        )
        report(chosen, records, stopped, dtype, args, out)
        return
    prompts = interleaved_categories(load_prompts(args.prompts, args.limit))
    base = load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype))
    runner, header = build_run(chosen, base, dtype, args, stopped, max(len(p.turns) for p in prompts))
    start = time.perf_counter()
    records = run_prompts(runner, prompts, out / "decode", fingerprint, 0, progress=True, header=header)
    print(
        f"decode run: {time.perf_counter() - start:.0f} s, {len(records)} prompts x {len(runner.methods)} methods x {args.repeats} repeats"
    )
    (out / "decode.json").write_text(json.dumps({**header, "records": records}) + "\n")
    report(chosen, records, header, dtype, args, out)


def build_run(chosen, base, dtype: str, args, stopped: dict, turns: int) -> tuple[Runner, dict]:
    """Every method of the run (our AR, HF generate, the lookup baselines at their best, each
    family with its auto tree), and the header that pins the trees and lookup settings: a resumed
    run decodes with those it began with, since choices made anew from costs measured now could
    differ and the records would mix."""
    eos = Engine(base).default_eos()
    settings = stopped.get("baselines") or tune_baselines(tuning(args), base, eos)
    methods = [
        engine_method(MethodName.AUTOREGRESSIVE, Engine(base)),
        hf_method(MethodName.HF_GENERATE, base, eos, None),
        *lookup_methods(base, eos, settings),
    ]
    trees = {}
    for label, recipe, folder, _ in chosen:
        draft = load_family(Path("outputs") / folder / "heads", base, dtype)
        if draft.backbone is not base:  # a trained backbone: its own autoregressive decoding is its baseline
            methods.append(engine_method(f"{MethodName.AUTOREGRESSIVE}:{recipe}", Engine(draft.backbone)))
        print(f"{label}:")
        if stopped:
            trees[recipe] = stopped["trees"][recipe]
            tree = spec_of(trees[recipe])
            print(f"  resumed with the tree the stopped run began with: {tree.describe()}")
        else:
            tree, choice = resolve_tree(EvalConfig(heads=str(draft.folder), max_new_tokens=args.max_new_tokens), draft, turns=turns)
            trees[recipe] = {**choice, "spec": tree.describe()}  # static paths included: a resumed run decodes this very tree
        methods.append(engine_method(recipe, Engine(draft.backbone, draft.heads, tree)))
    assert [m.name for m in methods] == method_names(chosen)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, eos_token_ids=eos, seed=0)
    # Every token re-scored by the model its method decodes (a trained backbone's family by that backbone), and by its fp32 twin.
    formatter = ChatFormatter(base.tokenizer, model_name=base.location.spec)
    runner = Runner(
        methods, formatter, config, near_tie_epsilon(base.lm_head.weight.dtype), verify=True, verify_fp32=True, repeats=args.repeats
    )
    return runner, {"trees": trees, "baselines": settings, "turns": turns}


def tuning(args) -> EvalConfig:
    """The eval settings the lookup baselines are swept with: the run's token budget, on prompts
    that are not the run's."""
    return EvalConfig(heads="", prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                      baselines=BaselineSettings(tune_prompts=args.tune_prompts, tune_limit=args.tune_limit))


def spec_of(choice: dict) -> TreeSpec | None:
    """The tree a trees entry decoded with (None: none recorded)."""
    return TreeSpec.from_description(choice["spec"]) if "spec" in choice else None


def fingerprint_of(args, dtype: str, chosen) -> str:
    """The settings a resumed run must share, the heads' weights included (retrained heads start a
    new run): a stopped run with other settings is refused by `run_prompts` (delete
    decode.partial.jsonl to start over). The trees and lookup settings it chose are in its header."""
    weights = {recipe: weights_identity(Path("outputs") / folder / "heads") for _, recipe, folder, _ in chosen}
    tune = [args.tune_prompts, args.tune_limit]
    return json.dumps(
        ["records 3", args.prompts, args.limit, args.max_new_tokens, args.repeats, dtype, method_names(chosen), weights, tune]
    )


def weights_identity(folder: Path) -> str:
    """Size and modification time of every weights file under a heads folder (a trained backbone's
    too), hashed: retraining changes it, writing the heads' eval summary or card does not."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def method_names(chosen) -> list[str]:
    """The run's methods in order (a family with its own trained backbone brings its own AR)."""
    names = [MethodName.AUTOREGRESSIVE, MethodName.HF_GENERATE, MethodName.HF_PROMPT_LOOKUP, MethodName.LOOKUP]
    for _, recipe, folder, _ in chosen:
        heads = Path("outputs") / folder / "heads"
        if (heads / "adapter").is_dir() or (heads / "backbone").is_dir():
            names.append(f"{MethodName.AUTOREGRESSIVE}:{recipe}")
        names.append(recipe)
    return names


def predicted(folder: str, tree: dict, turns: int, args) -> tuple[float | None, str | None]:
    """τ the heads' calibration.json predicts for the decoded tree, for a decode of `turns` x
    max_new_tokens (as `draftheads eval` predicts it: the decode's steps replayed on calibration
    answers when the file keeps them, else held-out position frequencies), and where it comes from
    ((None, None): no tree, or no calibration)."""
    saved = read_calibration(Path("outputs") / folder / "heads", turns, args.max_new_tokens)
    spec = spec_of(tree)
    if saved is None or spec is None:
        return None, None
    tau, _, source = predicted_tau(spec, saved[0], saved, [], (turns, args.max_new_tokens))
    return tau, source


def report(chosen, records: list[dict], header: dict, dtype: str, args, out: Path) -> None:
    """The tables (printed, and as a record with --record), and each family's summary in its heads
    folder and model card."""
    times_path = SETS[args.set][1] / "train_seconds.json"  # written by the set's training, wherever this run's records go
    trees = header["trees"]
    predictions = {recipe: predicted(folder, trees[recipe], header.get("turns", 2), args) for _, recipe, folder, _ in chosen}
    tables = run_tables(chosen, records, header, json.loads(times_path.read_text()) if times_path.is_file() else {}, predictions, dtype)
    for table in tables.values():
        print(markdown_table(table))
    if args.record:
        figures = {"baselines": header["baselines"], "trees": trees, "n_prompts": len(records), "repeats": args.repeats,
                   "tau_predicted": {recipe: p[0] for recipe, p in predictions.items()},
                   "speed_ratios": {f"{a}/{b}": dataclasses.asdict(speed_ratio(records, a, b)) for a, b in ratio_pairs(chosen, records)}}
        record = Record.measured_now(args.record, "python " + " ".join(sys.argv), dtype, tables, figures)
        print(f"wrote {record.write()}")
    if not args.cards:
        return
    for label, recipe, folder, _ in chosen:
        heads = Path("outputs") / folder / "heads"
        write_summary(family_report(records, label, recipe, folder, header, dtype, args).summary(), heads)
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


def family_report(records: list[dict], label: str, recipe: str, folder: str, header: dict, dtype: str, args):
    """One family's `EvalReport` from this run, built as `draftheads eval` builds its own
    (`report_from_records`): the family's records under the eval's method names (its own trained
    backbone's autoregressive decoding as the autoregressive baseline), its tree and how it was chosen."""
    own_ar = f"{MethodName.AUTOREGRESSIVE}:{recipe}"
    renamed = []
    for record in records:
        methods = {m: turns for m, turns in record["methods"].items() if m in (MethodName.AUTOREGRESSIVE, *BASELINES)}
        if own_ar in record["methods"]:
            methods[MethodName.AUTOREGRESSIVE] = record["methods"][own_ar]
        renamed.append({**record, "methods": {**methods, MethodName.OURS: record["methods"][recipe]}})
    heads = Path("outputs") / folder / "heads"
    draft = load_family(heads, load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype)), dtype)
    config = EvalConfig(heads=str(heads), prompts=args.prompts, limit=args.limit, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                        dtype=dtype, baselines=tuning(args).baselines)
    turns = header.get("turns", 2)
    held_out = read_calibration(heads, turns, args.max_new_tokens)
    tree = header["trees"][recipe]
    note = f"{dtype} (bench/families.py, {label})"
    context = ReportContext(tree_choice=tree, baselines=header["baselines"], dtype_note=note, backbone_drift=None)
    return report_from_records(config, draft, spec_of(tree), renamed, context, held_out, near_tie_epsilon(getattr(torch, dtype)))


def mismatches(records: list[dict], method: str, dtype: str) -> tuple[int | None, int | None]:
    """Real mismatches and near ties of a method's tokens re-scored in the decode dtype."""
    table = verification(records, method, near_tie_epsilon(getattr(torch, dtype)))
    return real_mismatches(table, dtype), near_ties(table, dtype)


SHORT = {MethodName.AUTOREGRESSIVE: "our AR", MethodName.HF_GENERATE: "HF generate", MethodName.HF_PROMPT_LOOKUP: "HF prompt lookup",
         MethodName.LOOKUP: "our lookup alone"}
"""Baseline names as the tables print them."""


def own_baseline(records: list[dict], recipe: str, baseline: str) -> str:
    """The method a family's speed is compared with: a family with its own trained backbone is
    compared with that backbone's autoregressive decoding, not the base's."""
    own = f"{MethodName.AUTOREGRESSIVE}:{recipe}"
    return own if baseline == MethodName.AUTOREGRESSIVE and own in records[0]["methods"] else baseline


def ratio_pairs(chosen, records: list[dict]) -> list[tuple[str, str]]:
    """(family, baseline) for every family and baseline, and each baseline over HF generate."""
    pairs = [(b, MethodName.HF_GENERATE) for b in BASELINES if b != MethodName.HF_GENERATE]
    return pairs + [(recipe, own_baseline(records, recipe, b)) for _, recipe, _, _ in chosen for b in BASELINES]


def ratio_cell(ratio) -> str:
    return f"{ratio.median:.2f}x ({ratio.ci95[0]:.2f}-{ratio.ci95[1]:.2f})"


def run_tables(chosen, records: list[dict], header: dict, train_seconds: dict, predictions: dict, dtype: str) -> dict[str, Table]:
    """The run's tables: each family's τ and step costs, its speed over each baseline (median of the
    repeats, 95% bootstrap interval over prompts and repeats), the baselines, and every method's
    tokens re-scored."""
    return {"families": families_table(chosen, records, header, train_seconds, predictions), "ratios": ratios_table(chosen, records),
            "baselines": baselines_table(records, header), "verification": verification_table(chosen, records, dtype)}


def families_table(chosen, records: list[dict], header: dict, train_seconds: dict, predictions: dict) -> Table:
    table = Table(["heads", "train min", "tree auto chose", "τ", "τ predicted (error)", "accepted per step, depth 1 / 2 / 3",
                   "draft ms / verify ms per step"], [])
    for label, recipe, _, _ in chosen:
        turns = [t for r in records for t in r["methods"][recipe]]
        accepted = [a for t in turns for a in t["accepted"]]
        steps = max(len(accepted), 1)
        cost = " / ".join(f"{1000 * sum(t['times'][k] for t in turns) / steps:.1f}" for k in ("draft", "verify"))
        tau, forecast = tau_of(accepted) or 1.0, predictions[recipe][0]
        minutes = f"{train_seconds[label] / 60:.1f}" if label in train_seconds else "n/a"
        by_depth = " / ".join(f"{x:.3f}" for x in acceptance_by_depth(accepted, 3))
        table.rows.append([label, minutes, tree_text(header["trees"][recipe]), f"{tau:.3f}",
                           f"{forecast:.3f} ({(forecast - tau) / tau:+.1%})" if forecast else "n/a", by_depth, cost])
    return table


def ratios_table(chosen, records: list[dict]) -> Table:
    speeds = {m: tokens_per_s(records, m) for m in BASELINES}
    best = max(BASELINES, key=lambda m: speeds[m])
    table = Table(["heads", *(f"ours / {SHORT[b]}" + (" (the best baseline)" if b == best else "") for b in BASELINES)], [])
    for label, recipe, _, _ in chosen:
        table.rows.append([label, *(ratio_cell(speed_ratio(records, recipe, own_baseline(records, recipe, b))) for b in BASELINES)])
    return table


def baselines_table(records: list[dict], header: dict) -> Table:
    table = Table(["method", "setting", "tokens/s", "/ HF generate"], [])
    for method in BASELINES:
        setting = header["baselines"].get(method)
        text = f"{setting['tokens']} tokens, {setting['ngram']}-gram ({setting['chosen']})" if setting else "-"
        versus = ratio_cell(speed_ratio(records, method, MethodName.HF_GENERATE)) if method != MethodName.HF_GENERATE else "1"
        table.rows.append([SHORT[method], text, f"{tokens_per_s(records, method):.2f}", versus])
    return table


def verification_table(chosen, records: list[dict], dtype: str) -> Table:
    table = Table(["method", "re-scored in", "tokens emitted", "tokens verified", "real mismatches", "near ties", "max gap", "p99 gap"], [])
    epsilon = near_tie_epsilon(getattr(torch, dtype))
    names = {**SHORT, **{recipe: label for label, recipe, _, _ in chosen}}
    for method in records[0]["methods"]:
        for scored, row in verification(records, method, epsilon).items():
            table.rows.append([names.get(method, method), scored, str(row.tokens_emitted), str(row.tokens_verified), str(row.mismatches),
                               str(row.near_ties), f"{row.gap_max:.3f}", f"{row.gap_p99:.3f}"])
    return table


def tree_text(tree: dict) -> str:
    shape = f"{tree.get('budget')} x {tree.get('width')}" if "budget" in tree else tree["reason"]
    return shape + (f" + {tree['lookup']}-token branch" if tree.get("lookup") else "")


if __name__ == "__main__":
    main()
