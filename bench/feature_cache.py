"""Claim: training from the hidden-state cache follows the online loss curve and a later epoch from
it is faster than online (the goal was 10x on CPU).

    python bench/feature_cache.py [--recipe smollm2-135m/medusa1] [--steps 12] [--limit 300] [--dtype bfloat16]

One process: builds the cache for the recipe's data (timed, with its disk size), then trains the same
recipe for --steps steps online and from the cache with the same seed, and prints the step times
(median over the steps after the first two, so one-off start-up is excluded), their ratio and the
largest relative difference between the two loss curves.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from draftheads.data.features import build_feature_cache
from draftheads.train.config import load_recipe
from draftheads.train.loop import train


def timed_run(recipe) -> tuple[list[float], list[float]]:
    stamps = [time.perf_counter()]
    result = train(recipe, on_step=lambda step: stamps.append(time.perf_counter()), progress=False)
    return result.losses, [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="smollm2-135m/medusa1")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feature-cache-bench-"))
    common = [f"data.sources.0.limit={args.limit}", "data.eval_fraction=0", f"train.max_steps={args.steps}",
              f"train.save_every={args.steps}", "train.trackers=[]", f"data.feature_cache.dtype={args.dtype}"]
    cached_recipe = load_recipe(args.recipe, common + [f"train.output_dir={work / 'cached'}", f"data.feature_cache.path={work / 'cache'}"])
    start = time.perf_counter()
    build_feature_cache(cached_recipe, progress=False)
    build_seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (work / "cache").glob("*.safetensors"))

    online_losses, online_steps = timed_run(load_recipe(args.recipe, common + [f"train.output_dir={work / 'online'}"]))
    cached_losses, cached_steps = timed_run(cached_recipe)
    online = statistics.median(online_steps[2:])
    cached = statistics.median(cached_steps[2:])
    diff = max(abs(a - b) / abs(a) for a, b in zip(online_losses, cached_losses))
    print(f"cache: built in {build_seconds:.1f} s, {size / 1e6:.1f} MB ({args.dtype}) in {work / 'cache'}")
    print(f"step time, median of steps 3..{args.steps}: online {online * 1000:.0f} ms, from the cache {cached * 1000:.0f} ms: "
          f"ratio {online / cached:.2f}x")
    print("loss online: " + " ".join(f"{x:.3f}" for x in online_losses))
    print("loss cached: " + " ".join(f"{x:.3f}" for x in cached_losses))
    print(f"largest relative loss difference: {diff:.2e}")
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
