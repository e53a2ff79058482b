"""Claim: calibrating the heads on the base model's answers to prompts like the served ones
(`draftheads calibrate`) predicts the τ of an MT-bench decode within 5%, where training's held-out
rows (ShareGPT) predict it 2-6% high (issue 17).

    python bench/calibration_prompts.py [--prompts calibration] [--sharegpt 80 --out bench/out/calibration-mixed]

The calibration prompts: `calibration` (draftheads/data/calibration_questions.jsonl), 48 two-turn
questions written for this purpose in MT-bench's eight categories (6 each, one of them carrying a
page of material: a draft, code, notes, a table); none is an MT-bench question. The base model
answers them once (greedy, 128 new tokens per turn, the decode dtype; resumable), and each quality
family's heads are calibrated on those answers with `draftheads calibrate`: it writes the heads'
calibration.json (what `draftheads eval`, the family run's report and the model cards predict from)
and keeps training's as calibration.previous.json, which the first column of predictions reads.

With `--sharegpt N` the set also holds N real user conversations with two user turns, from
ShareGPT conversation 400 on (the quality heads were trained on answers to the first 275, and
`bench/tau_prediction.py --prompts unseen-sharegpt` decodes from 300); the combined prompts are
written to `<out>/prompts.jsonl`.

Nothing is decoded here. τ measured for the heads alone is that of the family run over all 80
MT-bench questions (bench/out/families-quality/decode.json from `python bench/families.py --set
quality --limit 80`), for the tree each family decoded with; with the lookup
branch (10 tokens, n-gram 2), that of the lookup-branch runs (bench/out/lookup-branch*/ from
`python bench/lookup_branch.py`, the questions they finished). Predictions are for 2 turns x 128 new
tokens: from position frequencies (`RankStats.within`, training's held-out rows or the calibration
answers) and by replaying the decode's steps on the calibration answers (`RankStats.replayed`).
Static trees are checked against `bench/tau_prediction.py`'s MT-bench run (its trees and records).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from draftheads.decoding.planning.search import expected_tau
from draftheads.decoding.planning.stats import read_calibration
from draftheads.eval.calibrate import calibrate
from draftheads.models.heads_folder import CALIBRATION_NAME, PREVIOUS_CALIBRATION_NAME as PREVIOUS_NAME
from draftheads.eval.metrics import tau_of
from draftheads.eval.runner import partial_lines
from draftheads.eval.prompts import load_prompts

from families import SETS
from tau_prediction import unseen_sharegpt

SHAREGPT_FROM = 400
"""First ShareGPT conversation `--sharegpt` takes (past those trained on and those decoded)."""

TRAINING_SOURCE = "held-out rows of the training data"
"""How training's calibration.json names its source (train/loop.py)."""


def lookup_records() -> dict[str, list[list[dict]]]:
    """Method name -> its questions' turns in the lookup-branch runs (finished or stopped: the
    questions done); a method several runs decoded (lookup alone) from the first of them only."""
    out: dict[str, list[list[dict]]] = {}
    for folder in sorted(Path("bench/out").glob("lookup-branch*")):
        earlier = set(out)
        done = folder / "decode.json"
        if done.is_file():
            records = json.loads(done.read_text())["records"]
        else:
            _, lines = partial_lines(folder / "decode.partial.jsonl")
            records = [json.loads(line) for line in lines[1:]]
        for record in records:
            for name, turns in record["methods"].items():
                if name not in earlier:
                    out.setdefault(name, []).append(turns)
    return out


def training_calibration(heads: Path, shape: tuple[int, int]):
    """Training's held-out calibration of `heads`: their calibration.json, or the one `draftheads
    calibrate` kept when it replaced it."""
    for name in (CALIBRATION_NAME, PREVIOUS_NAME):
        saved = read_calibration(heads, *shape, name=name)
        if saved is not None and saved[1].startswith(TRAINING_SOURCE):
            return saved[0]
    raise SystemExit(f"{heads}: no calibration from training's held-out rows ({CALIBRATION_NAME} or {PREVIOUS_NAME})")


def predictions(held_out, prompts, tree: dict, shape: tuple[int, int]) -> list[float | None]:
    """τ predicted for the family run's dynamic tree: from training's held-out position
    frequencies, from the calibration prompts' position frequencies, and by replaying the decode."""
    budget, width = tree["budget"], tree["width"]
    replayed = tau_of(prompts.replayed(prompts.best_paths(budget, width), *shape))
    return [expected_tau(held_out, budget, width), expected_tau(prompts, budget, width), replayed]


def lookup_row(label: str, tree: dict | None, questions: list[list[dict]], replayed: list[int] | None) -> tuple:
    """A row of the lookup table: measured τ over the runs' turns of that method, its sampling
    spread over questions, and the replay's τ."""
    def tau(sample: list[list[dict]]) -> float | None:
        return tau_of([a for turns in sample for t in turns for a in t["accepted"]])

    rng = random.Random(0)
    resampled = [tau(rng.choices(questions, k=len(questions))) for _ in range(1000)] if questions else []
    spread = statistics.pstdev(resampled) if resampled else None
    return label, tree, tau(questions), sum(map(len, questions)), spread, tau_of(replayed) if replayed else None


def static_and_dynamic(families, shape: tuple[int, int]) -> None:
    """The replay against `bench/tau_prediction.py`'s MT-bench run, whose static and dynamic trees of
    one budget were decoded (its trees are read from the run's header; nothing is decoded here)."""
    path = Path("bench/out/families-quality/tau_prediction-mt-bench.partial.jsonl")
    header, lines = partial_lines(path)
    if not lines:
        return
    trees = dict(json.loads(header["options"])[-1])
    records = [json.loads(line) for line in lines[1:]]
    folders = {recipe: Path("outputs") / folder / "heads" for _, recipe, folder, _ in families}
    print(f"\nStatic and dynamic trees; τ measured: {len(records)} MT-bench questions ({path})")
    print("| tree | τ measured | τ predicted: calibration prompts, replayed steps |")
    print("| --- | --- | --- |")
    for name, tree in sorted(trees.items()):
        recipe, kind = name.split(":")
        stats, _ = read_calibration(folders[recipe], *shape)
        replayed = tau_of(stats.replayed(tree if kind == "static" else stats.best_paths(*tree), *shape))
        measured = tau_of([a for r in records for t in r["methods"][name] for a in t["accepted"]])
        print(f"| {name} {tree} | {measured:.3f} | {error(replayed, measured)} |")


def with_sharegpt(written: str, count: int, out: Path) -> Path:
    """The `written` prompt set and `count` unseen two-turn ShareGPT conversations, in one JSONL file."""
    prompts = load_prompts(written) + unseen_sharegpt(count, SHAREGPT_FROM, two_turns=True)
    rows = [{"question_id": p.id, "category": p.category, "turns": p.turns} for p in prompts]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def error(predicted: float | None, measured: float | None) -> str:
    if predicted is None or measured is None:
        return "-"
    return f"{predicted:.3f} ({(predicted - measured) / measured:+.1%})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", default="calibration")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="as the family run decoded")
    parser.add_argument("--lookup", type=int, default=10, help="as the lookup-branch runs decoded")
    parser.add_argument("--sharegpt", type=int, default=0, help="add this many unseen two-turn ShareGPT conversations to the prompts")
    parser.add_argument("--out", type=Path, default=Path("bench/out/calibration"))
    args = parser.parse_args()
    if args.sharegpt:
        args.prompts = str(with_sharegpt(args.prompts, args.sharegpt, args.out))
    families, family_out = SETS["quality"]
    run_path = family_out / "decode.json"
    if not run_path.is_file():
        raise SystemExit(f"{run_path}: run `python bench/families.py --set quality --limit 80` first (its τ is the one predicted)")
    run = json.loads(run_path.read_text())
    records, trees = run["records"], run["trees"]
    with_lookup = lookup_records()
    shape = (2, args.max_new_tokens)
    heads_rows, lookup_rows = [], []
    for label, recipe, folder, _ in families:
        heads = Path("outputs") / folder / "heads"
        held_out = training_calibration(heads, shape)
        stats, _ = calibrate(str(heads), args.prompts, max_new_tokens=args.max_new_tokens, answers=str(args.out / "answers"))
        prompts, tree = stats.within(*shape), trees[recipe]
        measured = tau_of([a for r in records for t in r["methods"][recipe] for a in t["accepted"]])
        heads_rows.append(
            (label, tree, measured, predictions(held_out, prompts, tree, shape), [held_out.depth_topk[0][0], prompts.depth_topk[0][0]])
        )
        paths = prompts.best_paths(tree["budget"], tree["width"])
        lookup_rows.append(
            lookup_row(
                f"{label} + lookup", tree, with_lookup.get(f"{recipe}+lookup", []), prompts.replayed(paths, *shape, lookup=args.lookup)
            )
        )
        if not lookup_rows[0][0].startswith("lookup alone"):  # the copies are the answers', whichever heads
            lookup_rows.insert(
                0, lookup_row("lookup alone", None, with_lookup.get("lookup_only", []), prompts.replayed([], *shape, lookup=args.lookup))
            )
    print(
        f"\nHeads alone; τ measured: {len(records)} MT-bench questions, both turns, {args.max_new_tokens} new tokens, greedy ({run_path})"
    )
    print("| heads | tree | τ measured | depth-1 top-1: held-out rows / calibration prompts "
          "| τ predicted: held-out rows, positions | calibration prompts, positions | calibration prompts, replayed steps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, tree, measured, forecasts, top1 in heads_rows:
        cells = " | ".join(error(p, measured) for p in forecasts)
        print(f"| {label} | {tree['budget']} x {tree['width']} | {measured:.3f} | {top1[0]:.3f} / {top1[1]:.3f} | {cells} |")
    print(f"\nWith the lookup branch ({args.lookup} tokens, n-gram 2); τ measured: the lookup-branch runs' finished questions")
    print(
        "| method | tree | turns measured | τ measured (bootstrap SD over questions) | τ predicted: calibration prompts, replayed steps |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, tree, measured, turns, spread, predicted in lookup_rows:
        shape_text = f"{tree['budget']} x {tree['width']}" if tree else "none"
        measured_text = f"{measured:.3f} ({spread / measured:.1%})" if measured else "-"
        print(f"| {label} | {shape_text} | {turns} | {measured_text} | {error(predicted, measured)} |")
    static_and_dynamic(families, shape)


if __name__ == "__main__":
    main()
