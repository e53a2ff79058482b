"""`draftheads eval --heads DIR_OR_HUB_ID --prompts FILE ... --out report.json`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `eval`."""
    parser.add_argument("--heads", required=True, help="heads folder or Hub id")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument("--prompts", default="mt-bench", help="MT-bench question.jsonl, ShareGPT file, JSONL with 'prompt', or mt-bench (packaged copy)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 = lossless speculative sampling")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--tree", choices=("auto", "static", "dynamic"), default="auto", help="auto: the tree saved by `draftheads tree`, else dynamic")
    parser.add_argument("--tree-budget", type=int, default=16, help="drafted nodes per step (dynamic trees, and static trees without a saved one)")
    parser.add_argument("--tree-width", type=int, default=8, help="dynamic trees: most nodes added per depth")
    parser.add_argument("--limit", type=int, help="first N prompts only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--drift-batches", type=int, default=8, help="jointly trained backbones: held-out batches for agreement and perplexity")
    parser.add_argument("--out", default="report.json", help="report.json path; report.md and report.png are written beside it")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and write the report."""
    from draftheads.eval.report import write_report
    from draftheads.eval.runner import EvalOptions, run_eval

    options = EvalOptions(
        heads=args.heads, prompts=args.prompts, base=args.base, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, tree=args.tree,
        tree_budget=args.tree_budget, tree_width=args.tree_width, limit=args.limit, seed=args.seed,
        device=args.device, dtype=args.dtype, drift_batches=args.drift_batches,
    )
    out = Path(args.out)
    report = run_eval(options, out)
    paths = write_report(report, out)
    out.with_name(out.name + ".partial.jsonl").unlink(missing_ok=True)
    print(
        f"tau {report['tau']:.3f} (predicted {report['tau_predicted'] or float('nan'):.3f}); "
        f"{report['tokens_per_s']:.2f} tok/s = {report['speedup']:.2f}x our autoregressive, "
        f"{report['speedup_vs_hf_generate']:.2f}x HF generate, {report['speedup_vs_prompt_lookup']:.2f}x prompt lookup; "
        f"greedy mismatches: {report['greedy_mismatches']}"
    )
    drift = report.get("backbone_drift")
    if drift and "error" in drift:
        print(f"warning: the backbone was trained ({report['backbone_mode']}) but its drift was not measured: {drift['error']}")
    elif drift:
        print(
            f"backbone ({report['backbone_mode']}): agrees with the original on {drift['agreement']:.2%} of {drift['positions']} held-out tokens; "
            f"perplexity {drift['perplexity_original']:.3f} (original) -> {drift['perplexity_trained']:.3f} (trained)"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
