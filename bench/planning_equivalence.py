"""Claim: moving tree planning into decoding/planning (issue 32) changed no number: on the same heads,
calibration and measured costs, the auto tree's every candidate (τ expected, step seconds) and its
choice are identical before and after, and a decode of the chosen tree accepts the same tokens.

    python bench/planning_equivalence.py --heads DIR [--old 9e48270] [--limit 2] [--max-new-tokens 128] [--record NAME]

Costs are measured once, with this checkout's code, and rounded as report.json writes them; both
versions then plan from that same file (a second measurement would differ by timing noise alone).
The old version runs in a subprocess from a git worktree of `--old` (the commit before the move),
imported ahead of the installed package. τ measured: both versions decode the first `--limit`
MT-bench questions (first turns) with the chosen tree, and the accepted counts per step must match.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


def costs_from_json(data: dict, cls):
    """A TreeCosts of either version from report.json's millisecond form."""
    costs = cls({int(k): v / 1000 for k, v in data["verify_ms_by_nodes"].items()})
    costs.draft = {tuple(int(x) for x in k.split("x")): v / 1000 for k, v in data["draft_ms_by_budget_width"].items()}
    costs.lookup = {int(k): v / 1000 for k, v in data["lookup_ms_by_tokens"].items()}
    return costs


def plan(heads: str, costs_file: Path, shape: tuple[int, int], limit: int, dtype: str, old: bool) -> dict:
    """The auto tree's candidates and choice from the saved costs, and a decode with it, by the
    version of draftheads on sys.path."""
    import torch

    from draftheads.decoding.engine import Engine, GenerationConfig
    from draftheads.eval.prompts import load_prompts
    from draftheads.data.chat import ChatFormatter
    from draftheads.models.draft_model import DraftModel

    if old:
        from draftheads.decoding.autotree import LOOKUPS, TreeCosts, choose_auto_tree
        from draftheads.decoding.calibration import read_calibration
    else:
        from draftheads.decoding.planning.costs import LOOKUPS, TreeCosts
        from draftheads.decoding.planning.search import choose_auto_tree
        from draftheads.decoding.planning.stats import read_calibration
    draft = DraftModel.from_pretrained(heads, device="cpu", dtype=dtype)
    saved = read_calibration(Path(heads), *shape)
    if saved is None:
        raise SystemExit(f"{heads}: no calibration.json to plan with (train the heads, or run `draftheads calibrate`)")
    stats, source = saved
    costs = costs_from_json(json.loads(costs_file.read_text()), TreeCosts)
    choice = choose_auto_tree(stats, costs, source, shape, (0, *LOOKUPS), 2)
    formatter = ChatFormatter(draft.backbone.tokenizer, model_name=draft.backbone.location.spec)
    engine = Engine(draft.backbone, draft.heads, choice.spec)
    accepted = []
    for prompt in load_prompts("mt-bench", limit):
        ids = torch.tensor(formatter.prompt_ids(prompt.messages([])))
        result = engine.generate(ids, GenerationConfig(max_new_tokens=shape[1], eos_token_ids=engine.default_eos()))
        accepted.append(result.accepted)
    candidates = sorted((c.budget, c.width, c.lookup, c.expected_tau, c.step_seconds) for c in choice.candidates)
    return {"spec": choice.spec.describe(), "candidates": candidates, "accepted": accepted}


def expected_tau(result: dict) -> float:
    """τ expected of the chosen candidate."""
    spec = result["spec"]
    key = [spec.get("budget", 0) if spec["kind"] != "none" else 0, spec.get("width", 0), spec.get("lookup", 0)]
    return next(c[3] for c in result["candidates"] if list(c[:3]) == key)


def measured_tau(result: dict) -> float:
    """1 + mean accepted drafts per step over every decoded question."""
    steps = [a for accepted in result["accepted"] for a in accepted]
    return 1 + sum(steps) / len(steps)


def run_version(args, costs_file: Path, old_root: Path | None) -> dict:
    """`plan` in a subprocess: this checkout's package, or the worktree at `old_root` ahead of it."""
    env = dict(os.environ)
    if old_root is not None:
        shim = Path(tempfile.mkdtemp()) / "draftheads"
        shim.symlink_to(old_root)
        env["PYTHONPATH"] = f"{shim.parent}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [sys.executable, str(HERE), "--heads", args.heads, "--max-new-tokens", str(args.max_new_tokens), "--limit", str(args.limit),
               "--dtype", args.dtype, "--phase", "old" if old_root else "new", "--costs", str(costs_file)]
    out = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", required=True, help="a heads folder whose calibration kept its answers")
    parser.add_argument("--old", default="9e48270", help="the commit before planning moved")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work", type=Path, default=Path("bench/out/planning-equivalence"))
    parser.add_argument("--record")
    parser.add_argument("--phase", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--costs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    given, args.heads = args.heads, str(Path(args.heads).resolve())
    shape = (2, args.max_new_tokens)
    if args.phase:
        print(json.dumps(plan(args.heads, args.costs, shape, args.limit, args.dtype, args.phase == "old")))
        return
    from draftheads.decoding.planning.costs import LOOKUPS, measure_costs
    from draftheads.models.draft_model import DraftModel

    args.work.mkdir(parents=True, exist_ok=True)
    costs_file = (args.work / "costs.json").resolve()
    draft = DraftModel.from_pretrained(args.heads, device="cpu", dtype=args.dtype)
    costs_file.write_text(json.dumps(measure_costs(draft, lookups=LOOKUPS).to_json()) + "\n")
    old_root = Path(tempfile.mkdtemp()) / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_root), args.old], check=True, capture_output=True)
    try:
        before, after = run_version(args, costs_file, old_root), run_version(args, costs_file, None)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_root)], check=True)
    same = {key: before[key] == after[key] for key in ("spec", "candidates", "accepted")}
    rows = [(f"before ({args.old})", before), ("after", after)]
    print(f"auto choice: {after['spec']} (before: {before['spec']})")
    print(f"candidates weighed: {len(after['candidates'])}; identical: {same['candidates']}; choice identical: {same['spec']}")
    print(
        f"decode of {args.limit} questions: τ measured {measured_tau(after):.4f} (before {measured_tau(before):.4f}); "
        f"accepted per step identical: {same['accepted']}"
    )
    if args.record:
        sys.path.insert(0, str(HERE.parent))
        from records import Record, Table

        table = Table(
            ["version", "auto choice", "τ expected", "candidates weighed", "τ measured"],
            [
                [name, json.dumps(r["spec"]), f"{expected_tau(r):.4f}", str(len(r["candidates"])), f"{measured_tau(r):.4f}"]
                for name, r in rows
            ],
        )
        command = (
            f"python bench/planning_equivalence.py --heads {given} --old {args.old} --limit {args.limit} "
            f"--max-new-tokens {args.max_new_tokens}"
        )
        print(f"wrote {Record.measured_now(args.record, command, args.dtype, {'equivalence': table}, same).write()}")
    if not all(same.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
