"""Claim: tree decoding with trained heads vs our autoregressive baseline vs HF generate (greedy)
vs HF prompt lookup, measured interleaved in one run on the same prompts; plus τ, τ predicted and
where the decode loop spends its time.

    python bench/decode_speed.py --heads outputs/smollm2-135m-medusa1/heads [--prompts mt-bench]
        [--limit 10] [--max-new-tokens 96] [--tree auto|static|dynamic] [--tree-budget 16]

It runs the same code as `draftheads eval` and writes the report beside `--out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from draftheads.eval.report import write_report
from draftheads.eval.runner import EvalOptions, run_eval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", required=True)
    parser.add_argument("--prompts", default="mt-bench")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--tree", default="auto", choices=("auto", "static", "dynamic"))
    parser.add_argument("--tree-budget", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--out", default="bench/out/decode_speed.json")
    args = parser.parse_args()
    options = EvalOptions(
        heads=args.heads, prompts=args.prompts, limit=args.limit, max_new_tokens=args.max_new_tokens,
        tree=args.tree, tree_budget=args.tree_budget, temperature=args.temperature,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run_eval(options, out)
    write_report(report, out)
    out.with_name(out.name + ".partial.jsonl").unlink(missing_ok=True)
    m = report["methods"]
    print(f"tree: {report['tree']}")
    for name in ("ours", "baseline", "hf_generate", "prompt_lookup"):
        print(f"{name:>14}: {m[name]['tokens']:5d} tokens in {m[name]['seconds']:7.2f} s = {m[name]['tokens_per_s']:6.2f} tok/s")
    print(f"ratio ours/our-AR {report['speedup']:.3f}, ours/HF-generate {report['speedup_vs_hf_generate']:.3f}, "
          f"ours/prompt-lookup {report['speedup_vs_prompt_lookup']:.3f}, our-AR/HF-generate {report['baseline_vs_hf_generate']:.3f}")
    print(f"tau {report['tau']:.3f}, tau predicted {report['tau_predicted']:.3f}, greedy mismatches {report['greedy_mismatches']}")
    tb = report["time_breakdown"]
    print("ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in tb["ms_per_step"].items())
          + f"; engine overhead {100 * tb['engine_overhead_fraction']:.1f}% of the loop")


if __name__ == "__main__":
    main()
