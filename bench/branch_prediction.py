"""Claim: τ of a tree with the lookup branch, replayed on a prompt set's answers, is what a decode
of those prompts measures, and what limits a prediction from other prompts is how much their
answers copy their context, turn by turn (issue 31: imported EAGLE-1 heads).

    python bench/branch_prediction.py --heads DIR --budget 8 --width 8 --lookup 12 [--max-new-tokens 64] [--record NAME]

For each prompt set (the calibration set's first conversation of each category, which was the
fallback, its 8 conversations that carry material, the whole set, which is the fallback now, the
first 8 MT-bench questions spread over its categories, all 80), the base model answers both turns
greedily (`draftheads calibrate --out`, resumable under `<work>/<set>`), and the decode of the
dynamic tree with and without the branch, and the branch alone, is replayed on those answers per
turn, with the bootstrap SD over answers. Where the decoded prompts are the replayed ones, the
replay stands for the decode (the eval's report says how close); across sets the rows show what the
prompts change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from draftheads.decoding.planning.stats import read_calibration
from draftheads.decoding.tree import TreeSpec
from draftheads.eval.calibrate import FALLBACK_PROMPTS, MATERIAL_CHARS, calibrate
from draftheads.eval.metrics import _replayed_tau, prediction_spread
from draftheads.eval.prompts import load_prompts

from records import Record, Table

SETS = (
    ("calibration, first of each category (the old fallback)", "calibration-8", ("calibration", 8)),
    (f"calibration, those whose first turn is over {MATERIAL_CHARS} characters", "calibration-material",
     ("calibration", None, MATERIAL_CHARS)),
    ("calibration, all (the fallback)", "calibration-48", FALLBACK_PROMPTS),
    ("MT-bench, 8 spread", "mt-bench-8", ("mt-bench", 8)),
    ("MT-bench, all 80", "mt-bench-all", ("mt-bench", None)),
)


def prompts_file(folder: Path, spec: str, limit: int | None, longer: int | None = None) -> tuple[str, int | None]:
    """The prompts to calibrate on: `spec` itself, or (with `longer`) a file in `folder` of its
    conversations whose first turn is longer than that."""
    if longer is None:
        return spec, limit
    path = folder / "prompts.jsonl"
    rows = [{"question_id": p.id, "category": p.category, "turns": p.turns} for p in load_prompts(spec, limit) if len(p.turns[0]) > longer]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), None


def replayed(stats, tree: TreeSpec, shape: tuple[int, int], turn: int | None) -> tuple[float, float | None]:
    """τ replayed on the answers of `turn` (None: every turn) and its bootstrap SD."""
    walks = [w for w in stats.walks if turn is None or w.turn == turn]
    held = (dataclasses.replace(stats, walks=walks), "")
    return _replayed_tau(tree, held, shape)[0], prediction_spread(tree, held, shape)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", required=True)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lookup", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work", type=Path, default=Path("bench/out/branch-prediction"))
    parser.add_argument("--record")
    args = parser.parse_args()
    shape = (2, args.max_new_tokens)
    trees = (
        ("tree + branch", TreeSpec("dynamic", budget=args.budget, width=args.width, lookup=args.lookup)),
        ("tree alone", TreeSpec("dynamic", budget=args.budget, width=args.width)),
        ("branch alone", TreeSpec("none", lookup=args.lookup)),
    )
    table = Table(["prompts replayed", *(f"{name}: turn 1 / turn 2 / both (SD)" for name, _ in trees)], [])
    figures = {}
    for label, name, chosen in SETS:
        folder = args.work / name
        prompts, limit = prompts_file(folder, *chosen)
        # Answers resume from `answers` (a changed set is refused there); the statistics are the heads' own, made each run.
        calibrate(
            args.heads, prompts, limit, args.max_new_tokens, dtype=args.dtype, out=str(folder / "calibration.json"),
            answers=str(folder / "answers")
        )
        stats, _ = read_calibration(folder, *shape)
        cells = []
        for tree_name, tree in trees:
            (first, _), (second, _), (both, sd) = (replayed(stats, tree, shape, turn) for turn in (0, 1, None))
            figures[f"{label}/{tree_name}"] = {"turn1": first, "turn2": second, "both": both, "sd": sd}
            cells.append(f"{first:.3f} / {second:.3f} / {both:.3f} ({sd:.3f})")
        table.rows.append([label, *cells])
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    if args.record:
        command = (
            f"python bench/branch_prediction.py --heads IMPORTED --budget {args.budget} --width {args.width} --lookup {args.lookup} "
            f"--max-new-tokens {args.max_new_tokens}"
        )
        print(f"wrote {Record.measured_now(args.record, command, args.dtype, {'replayed': table}, figures).write()}")


if __name__ == "__main__":
    main()
