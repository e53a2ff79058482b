"""Claim: a reduced draft vocabulary keeps nearly all of the heads' accuracy and removes the
drafting cost of projecting onto the whole vocabulary. For N = full, 16384, 8192, 4096 it trains
the Medusa-1 demo recipe (`medusa1-distill.yaml`, same data, steps and seed) with
`heads.draft_vocab_size=N`, then reports the coverage of the held-out targets, held-out top-1 by
depth, and the drafting time per step of a dynamic tree (budget 8, width 4) in bf16 and fp32.

    python bench/draft_vocab.py [--sizes 0 16384 8192 4096] [--recipe medusa1-distill]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from draftheads.decoding.planning.costs import draft_seconds
from draftheads.models.draft_model import DraftModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", type=int, default=[0, 16384, 8192, 4096])
    parser.add_argument("--recipe", default="medusa1-distill")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        out = Path("outputs") / f"vocab-{args.recipe}-{size or 'full'}"
        seconds = None
        if not (out / "heads").is_dir():
            start = time.perf_counter()
            subprocess.run(
                [
                    "draftheads",
                    "train",
                    f"recipes/smollm2-135m/{args.recipe}.yaml",
                    f"heads.draft_vocab_size={size}",
                    f"train.output_dir={out}",
                ],
                check=True,
            )
            seconds = time.perf_counter() - start
        final = json.loads((out / "heads" / "training.json").read_text())["final_eval"]
        draft_ms = {}
        for dtype in ("bfloat16", "float32"):
            draft = DraftModel.from_pretrained(out / "heads", dtype=dtype)
            draft_ms[dtype] = 1000 * draft_seconds(draft, 8, 4, repeats=9)
        rows.append((size or "full (49152)", final, draft_ms, seconds))
    print(
        "| draft vocabulary | coverage of held-out targets (depth 1) | held-out top-1 by depth | "
        "draft ms per step, bf16 | fp32 | train time |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for size, final, draft_ms, seconds in rows:
        top1 = " / ".join(f"{x:.3f}" for x in final["top1"])
        trained = f"{seconds:.0f} s" if seconds else "(trained earlier)"
        print(
            f"| {size} | {final.get('coverage', [1.0])[0]:.4f} | {top1} | "
            f"{draft_ms['bfloat16']:.2f} | {draft_ms['float32']:.2f} | {trained} |"
        )


if __name__ == "__main__":
    main()
