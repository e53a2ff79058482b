"""Claim: every head family at the same data, depth, steps and eval on the demo model, in one table
(τ, speedup over our autoregressive decoding and over HF generate, per-depth accuracy, training time).

    python bench/families.py [--run] [--only hydra eagle3 ...]

With `--run` it trains each family's recipe that has no exported heads yet (timing it) and
evaluates each one without a report, one after another (`draftheads train RECIPE`, then
`draftheads eval --heads DIR --prompts mt-bench --limit 5 --max-new-tokens 96 --tree dynamic
--tree-budget 8 --tree-width 4`); it always prints the table from what is on disk. Every recipe
reads the self-distilled data of `draftheads gen-data recipes/smollm2-135m/distill.yaml`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

# (label, recipe, output folder, extra overrides). Clover's recipe reads ShareGPT's original
# answers; here it reads the distilled data like the others.
DISTILLED = "data.sources=[{path: outputs/smollm2-135m-distill/data.jsonl}]"
FAMILIES = (
    ("Medusa-1", "medusa1-distill", "smollm2-135m-medusa1-distill", ()),
    ("Medusa-2 (LoRA)", "medusa2-lora", "m2-lr2e-5-w0.02", ()),
    ("Hydra", "hydra", "smollm2-135m-hydra", ()),
    ("Hydra++", "hydra-plus", "smollm2-135m-hydra-plus", ()),
    ("Clover", "clover", "smollm2-135m-clover-distill", (DISTILLED,)),
    ("EAGLE-1", "eagle1", "smollm2-135m-eagle1", ()),
    ("EAGLE-3", "eagle3", "smollm2-135m-eagle3", ()),
)
EVAL = ["--prompts", "mt-bench", "--limit", "5", "--max-new-tokens", "96", "--tree", "dynamic", "--tree-budget", "8", "--tree-width", "4"]
OUT = Path("bench/out/families")


def _run(label: str, recipe: str, folder: str, extra: tuple, times: dict) -> None:
    heads = Path("outputs") / folder / "heads"
    if not heads.is_dir():
        command = ["draftheads", "train", f"recipes/smollm2-135m/{recipe}.yaml", *extra, f"train.output_dir=outputs/{folder}"]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        times[label] = time.perf_counter() - start
        (OUT / "train_seconds.json").write_text(json.dumps(times, indent=2))
    report = OUT / recipe / "report.json"
    if not report.is_file():
        subprocess.run(["draftheads", "eval", "--heads", str(heads), *EVAL, "--out", str(report)], check=True)


def _row(label: str, recipe: str, folder: str, extra: tuple, times: dict) -> str:
    heads = Path("outputs") / folder / "heads"
    report_path = OUT / recipe / "report.json"
    if not report_path.is_file():
        return f"| {label} | not run | | | | | | | |"
    report = json.loads(report_path.read_text())
    training = json.loads((heads / "training.json").read_text()) if (heads / "training.json").is_file() else {}
    held = " / ".join(f"{x:.3f}" for x in (training.get("final_eval") or {}).get("top1", []))
    own = " / ".join(f"{report['depth_topk_accuracy'][k]['top1']:.3f}" for k in sorted(report["depth_topk_accuracy"]))
    accepted = " / ".join(f"{x:.3f}" for x in report["acceptance_by_depth"])
    seconds = times.get(label)
    trained = f"{seconds / 60:.1f} min" if seconds else "see RESULTS.md"
    mismatches = f"{report['greedy_mismatches']} / {report['hf_generate_mismatches']}"
    return (
        f"| {label} | {held} | {own} | {accepted} | {report['tau']:.3f} | {report['speedup']:.2f}x | "
        f"{report['speedup_vs_hf_generate']:.2f}x | {mismatches} | {trained} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", action="store_true", help="train and evaluate what is missing")
    parser.add_argument("--only", nargs="*", help="recipes to include (default: all)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    times_path = OUT / "train_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    chosen = [f for f in FAMILIES if not args.only or f[1] in args.only]
    if args.run:
        for family in chosen:
            _run(*family, times)
    print("| heads | held-out top-1 by depth (training eval) | top-1 on own answers by depth | accepted per step by depth | τ | ours / our AR | ours / HF generate | mismatches (AR / HF) | train time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in chosen:
        print(_row(*family, times))


if __name__ == "__main__":
    main()
