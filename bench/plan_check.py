"""Claim: `draftheads plan`'s memory per process is within 25% of the peak a real training run
reaches on this CPU, and its hidden-state cache size within 5% of the cache's files, on the demo
model (issue 33).

    python bench/plan_check.py [--steps 3] [--record plan-demo]

Each recipe trains `--steps` steps in a fresh process (`draftheads train`, one process, the
recipe's batch, data and dtype; held-out evaluation and a checkpoint at the last step) under
`/usr/bin/time`, whose maximum resident set size is the measured peak; the plan is made for the
same recipe and overrides on the CPU. Every recipe reads 1,200 ShareGPT conversations (the self-distilled
data some of them name need not exist). The cache is built by `draftheads cache-features` for the
first recipe with its data cut to `--cache-conversations` conversations, and compared with the
plan's bytes per token times the data's tokens.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from draftheads.train.config import load_recipe
from draftheads.train.dryrun import short_run
from draftheads.train.plan import GIB, launch_of, make_plan

from records import Record, Table, markdown_table

RECIPES = ("recipes/smollm2-135m/medusa1.yaml", "recipes/smollm2-135m/eagle3.yaml", "recipes/smollm2-135m/medusa2-lora.yaml")
"""A parallel family on the frozen base, a sequential one with fused features, and joint LoRA training."""


def peak_rss(recipe: str, overrides: list[str]) -> int:
    """Maximum resident set size (bytes) of `draftheads train` on the recipe."""
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "draftheads.scripts.cli", "train", recipe, *overrides]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{recipe}: training failed:\n{result.stderr[-2000:]}")
    return int(result.stderr.strip().splitlines()[-1]) * 1024


def cache_check(recipe: str, conversations: int, work: Path) -> list[str]:
    """The plan's cache size against the files `cache-features` writes."""
    overrides = [f"data.sources=[{{path: demo:sharegpt, limit: {conversations}}}]", f"data.feature_cache.path={work / 'cache'}"]
    subprocess.run([sys.executable, "-m", "draftheads.scripts.cli", "cache-features", recipe, *overrides], check=True, capture_output=True)
    written = sum(p.stat().st_size for p in (work / "cache").rglob("*.safetensors"))
    plan = make_plan(recipe, overrides, launch_of(None, None, None))
    planned = plan.cache_bytes_per_token * plan.data_tokens
    return [
        recipe,
        f"{plan.data_tokens:,}",
        f"{planned / 2**20:.2f} MiB",
        f"{written / 2**20:.2f} MiB",
        f"{(planned - written) / written:+.1%}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cache-conversations", type=int, default=200)
    parser.add_argument("--record", help="write the tables as bench/records/NAME/record.json")
    args = parser.parse_args()
    memory = Table(["recipe", "planned per process", "measured peak RSS", "plan / measured", "largest planned terms"], [])
    with tempfile.TemporaryDirectory() as scratch:
        for recipe in RECIPES:
            overrides = [
                "data.sources=[{path: demo:sharegpt, limit: 1200}]",
                "train.trackers=[]",
                f"train.output_dir={Path(scratch) / Path(recipe).stem}",
                "train.resume_from=null",
                *short_run(load_recipe(recipe), args.steps),
            ]
            plan = make_plan(recipe, overrides, launch_of(None, None, None))
            measured = peak_rss(recipe, overrides)
            top = ", ".join(f"{t.name} {t.bytes / 2**20:.0f} MiB" for t in sorted(plan.memory, key=lambda t: -t.bytes)[:3])
            memory.rows.append([recipe, f"{plan.total / GIB:.2f} GiB", f"{measured / GIB:.2f} GiB", f"{plan.total / measured:.2f}", top])
            print(markdown_table(memory), flush=True)
        cache = Table(
            ["recipe", "tokens", "planned", "written", "error"], [cache_check(RECIPES[1], args.cache_conversations, Path(scratch))]
        )
    print(markdown_table(cache))
    outside = [row[0] for row in memory.rows if abs(float(row[3]) - 1) > 0.25] + [
        row[0] for row in cache.rows if abs(float(row[4].rstrip("%"))) > 5
    ]
    if args.record:
        record = Record.measured_now(args.record, "python " + " ".join(sys.argv), "as each recipe", {"memory": memory, "cache": cache})
        print(f"wrote {record.write()}")
    if outside:
        raise SystemExit(f"outside the claim (memory within 25%, cache within 5%): {', '.join(outside)}")


if __name__ == "__main__":
    main()
