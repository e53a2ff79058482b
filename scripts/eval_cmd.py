"""`draftheads eval [CONFIG.yaml] --heads DIR_OR_HUB_ID [--prompts FILE ...] [key=value ...] --out report.json`.

Every setting is a field of `EvalConfig` (eval/config.py); a YAML file gives any of them, flags
and `key.sub=value` overrides (e.g. `tree.budget=8 sampling.temperature=0.7`) go on top.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from draftheads.models.engines import ENGINES

# flag -> EvalConfig key path (flags default to None: only those given override the file)
FLAGS = {
    "heads": "heads", "base": "base", "prompts": "prompts", "max_new_tokens": "max_new_tokens", "limit": "limit",
    "device": "device", "dtype": "dtype", "drift_batches": "drift_batches", "temperature": "sampling.temperature",
    "top_p": "sampling.top_p", "top_k": "sampling.top_k", "seed": "sampling.seed", "tree": "tree.kind",
    "tree_budget": "tree.budget", "tree_width": "tree.width", "tree_depth": "tree.depth", "tree_lookup": "tree.lookup",
}


def lookup_length(value: str) -> int | str:
    """--tree-lookup's value: a number of tokens, or auto."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or auto, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `eval`."""
    parser.add_argument(
        "items", nargs="*", metavar="CONFIG.yaml | key=value", help="an eval config file, then overrides such as tree.budget=8"
    )
    parser.add_argument("--heads", help="heads folder or Hub id (required, here or in the config)")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument("--prompts", help="MT-bench question.jsonl, ShareGPT file, JSONL with 'prompt', or mt-bench (default)")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per turn (default 128)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default); > 0 = lossless speculative sampling")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument(
        "--tree",
        choices=("auto", "static", "dynamic", "eagle2", "none", *ENGINES),
        help="auto (default): the tree with the highest expected tokens/s from costs measured at start-up, "
        "among dynamic trees and the saved static tree; "
        "eagle2: EAGLE-2's reranked tree (--tree-budget, --tree-width as its top-k, --tree-depth); "
        f"{', '.join(ENGINES)}: the tree that engine drafts with the export README's command",
    )
    parser.add_argument(
        "--tree-budget", type=int, help="drafted nodes per step (dynamic and eagle2 trees, and static trees without a saved one)"
    )
    parser.add_argument(
        "--tree-width", type=int, help="dynamic trees: most nodes added per depth; eagle2: nodes expanded per depth and children per node"
    )
    parser.add_argument(
        "--tree-depth",
        type=int,
        help="dynamic and eagle2 trees: most depths drafted (default: the heads' num_heads; EAGLE heads may go deeper)",
    )
    parser.add_argument(
        "--tree-lookup",
        type=lookup_length,
        help="greedy: also verify up to N tokens copied from the context (prompt lookup) as one more path of the tree; "
        "0: off; auto (default): chosen with --tree auto when the heads' calibration kept its answers "
        "(training's and `draftheads calibrate`'s do), else off",
    )
    parser.add_argument("--limit", type=int, help="N prompts, spread over the prompt set's categories")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto (default): bf16 where the hardware computes it natively, else fp32",
    )
    parser.add_argument("--drift-batches", type=int, help="jointly trained backbones: held-out batches for agreement and perplexity")
    parser.add_argument("--out", default="report.json", help="report.json path; report.md and report.png are written beside it")


def config_from_args(args: argparse.Namespace):
    """The EvalConfig of the command line: file, then flags, then overrides, checked as a whole."""
    from draftheads.eval.config import EvalConfig
    from draftheads.utils.errors import ConfigError
    from draftheads.utils.typed_config import apply_overrides, from_dict, read_yaml

    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if len(files) > 1:
        raise ConfigError(f"one eval config file at most, got {', '.join(files)}")
    data = read_yaml(files[0]) if files else {}
    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    data = apply_overrides(data, flags + overrides)
    label = files[0] if files else "eval options"
    if "heads" not in data:
        raise ConfigError(f"{label}: heads: required (--heads DIR or heads=DIR)")
    try:
        return from_dict(EvalConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def headline(report) -> str:
    """The report's line on the terminal: τ, and ours over each baseline with its interval."""
    from draftheads.eval.schema import MethodName as M, pair_key

    def ratio(b: str) -> str:
        r = report.speed_ratios[pair_key(M.OURS, b)]
        return f"{r.median:.2f}x [{r.ci95[0]:.2f}, {r.ci95[1]:.2f}]"

    near = f" (+{report.near_ties} near ties)" if report.near_ties else ""
    predicted = f"{report.tau_predicted:.3f}" if report.tau_predicted is not None else "n/a"
    return (
        f"tau {report.tau:.3f} (predicted {predicted}); "
        f"{report.methods[M.OURS].tokens_per_s:.2f} tok/s = {ratio(M.AUTOREGRESSIVE)} our autoregressive, "
        f"{ratio(M.HF_GENERATE)} HF generate, {ratio(M.HF_PROMPT_LOOKUP)} HF prompt lookup, "
        f"{ratio(report.best_baseline)} the best baseline ({report.best_baseline}) "
        f"(median of {report.speed_ratios[pair_key(M.OURS, M.AUTOREGRESSIVE)].repeats} repeats [95% interval], {report.dtype}); "
        f"greedy mismatches: {report.greedy_mismatches} of {report.new_tokens} tokens re-scored{near}"
    )


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and write the report."""
    from draftheads.eval.report import write_report, write_summary
    from draftheads.eval.runner import run_eval

    config = config_from_args(args)
    out = Path(args.out)
    report = run_eval(config, out)
    paths = write_report(report, out)
    out.with_name(out.name + ".partial.jsonl").unlink(missing_ok=True)
    if config.write_summary and Path(config.heads).is_dir():
        paths.append(write_summary(report.summary(), Path(config.heads)))
    print(headline(report))
    drift = report.backbone_drift
    if drift and "error" in drift:
        print(f"warning: the backbone was trained ({report.backbone_mode}) but its drift was not measured: {drift['error']}")
    elif drift:
        print(
            f"backbone ({report.backbone_mode}): agrees with the original on "
            f"{drift['agreement']:.2%} of {drift['positions']} held-out tokens; "
            f"perplexity {drift['perplexity_original']:.3f} (original) -> {drift['perplexity_trained']:.3f} (trained)"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
