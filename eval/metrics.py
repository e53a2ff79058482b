"""Report numbers from the per-prompt records of an eval run: τ, acceptance by depth, tokens/s,
speedups, mismatches, the predicted τ and where the time went."""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from draftheads.decoding.planning.search import expected_tau
from draftheads.decoding.tree import Tree, TreeSpec
from draftheads.decoding.planning.stats import RankStats
from draftheads.decoding.verify import TokenCheck, dtype_name
from draftheads.eval.schema import (
    BASELINES, SPEED_PAIRS, EvalReport, MethodName, MethodTotals, SpeedRatio, TimeBreakdown, VerificationRow, pair_key
)
from draftheads.models.draft_model import DraftModel


def tau_of(accepted: list[int]) -> float | None:
    """Mean tokens emitted per verification step (bonus included; `GenerationResult.accepted`)."""
    return 1 + sum(accepted) / len(accepted) if accepted else None


def acceptance_by_depth(accepted: list[int], depth: int) -> list[float]:
    """Per depth d (1-based): fraction of steps that accepted at least d drafted tokens; their sum
    plus 1 is τ."""
    steps = max(len(accepted), 1)
    return [sum(a >= d for a in accepted) / steps for d in range(1, depth + 1)]


def hardware() -> dict:
    """Where the numbers were measured."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    """Library versions of the run."""
    import accelerate
    import transformers
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("draftheads")
    except PackageNotFoundError:
        ours = "source"
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "draftheads": ours,
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The git commit of the checkout this draftheads runs from, `-dirty` with uncommitted changes
    to tracked files (None: not a git checkout, e.g. a wheel install)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def verification(records: list[dict], method: str, epsilon: float) -> dict[str, VerificationRow]:
    """Per re-scoring dtype, `method`'s emitted tokens as the model re-scored them: how many were
    emitted and re-scored, real mismatches (gap > epsilon, with where), near ties and the gap's
    distribution over every re-scored token (`decoding/verify.py`). Empty when nothing was re-scored
    (sampling)."""
    checks: dict[str, list[tuple[str, TokenCheck]]] = defaultdict(list)
    for r in records:
        for dtype, data in r.get("verify", {}).get(method, {}).items():
            checks[dtype].append((r["id"], TokenCheck.from_json(data)))
    emitted = sum(len(t["tokens"]) for r in records for t in r["methods"][method])
    table = {}
    for dtype, found in checks.items():
        verified = sum(check.tokens for _, check in found)
        gaps = sorted(gap for _, check in found for _, _, gap in check.gaps)
        table[dtype] = VerificationRow(
            tokens_emitted=emitted,
            tokens_verified=verified,
            mismatches=sum(check.mismatches(epsilon) for _, check in found),
            near_ties=sum(check.near_ties(epsilon) for _, check in found),
            gap_max=gaps[-1] if gaps else 0.0,
            gap_p99=_quantile(gaps, verified, 0.99),
            mismatch_sites=[
                {"id": rid, "turn": t, "position": p, "gap": g} for rid, check in found for t, p, g in check.gaps if g > epsilon
            ],
        )
    return table


def _quantile(nonzero: list[float], total: int, q: float) -> float:
    """The q-quantile of `total` values of which all but the sorted `nonzero` ones are 0."""
    if not total:
        return 0.0
    index = max(math.ceil(q * total) - 1, 0) - (total - len(nonzero))
    return nonzero[index] if index >= 0 else 0.0


def real_mismatches(table: dict[str, VerificationRow], dtype: str) -> int | None:
    """Real mismatches when re-scored in the decode `dtype` (None: nothing re-scored): what lossless
    greedy decoding must keep at 0 (the fp32 rows are read against the autoregressive methods')."""
    return table[dtype].mismatches if dtype in table else None


def near_ties(table: dict[str, VerificationRow], dtype: str) -> int | None:
    """Near ties when re-scored in the decode `dtype` (None: nothing re-scored)."""
    return table[dtype].near_ties if dtype in table else None


def tokens_per_s(records: list[dict], method: str) -> float:
    """`method`'s tokens over its seconds, all prompts and turns of its first answers."""
    turns = [t for r in records for t in r["methods"][method]]
    return sum(len(t["tokens"]) for t in turns) / sum(t["seconds"] for t in turns)


def repeat_seconds(record: dict, method: str) -> list[float]:
    """Seconds `method` took on the record's prompt (all turns), one value per repeat."""
    return [sum(turns) for turns in record["seconds"][method]]


def speed_ratio(records: list[dict], a: str, b: str, resamples: int = 2000, seed: int = 0) -> SpeedRatio:
    """`a`'s tokens/s over `b`'s: per repeat (over all prompts), their median, min and max, and a 95%
    bootstrap interval of the ratio that resamples prompts and, for each, one of its repeats (both
    methods' times from that same interleaved repeat): the interval of one run's ratio over prompts
    and repeats, wider than the median's own uncertainty, so a target met by its lower end is met."""
    tokens = {m: [sum(len(t["tokens"]) for t in r["methods"][m]) for r in records] for m in (a, b)}
    seconds = {m: [repeat_seconds(r, m) for r in records] for m in (a, b)}
    repeats = min(len(s) for m in (a, b) for s in seconds[m])

    def ratio(prompts: list[int], reps: list[int]) -> float:
        speed = {m: sum(tokens[m][i] for i in prompts) / sum(seconds[m][i][k] for i, k in zip(prompts, reps)) for m in (a, b)}
        return speed[a] / speed[b]

    everyone = list(range(len(records)))
    per_repeat = [ratio(everyone, [k] * len(records)) for k in range(repeats)]
    rng = random.Random(seed)
    draws = sorted(
        ratio([rng.randrange(len(records)) for _ in everyone], [rng.randrange(repeats) for _ in everyone]) for _ in range(resamples)
    )
    return SpeedRatio(
        median=statistics.median(per_repeat), min=min(per_repeat), max=max(per_repeat), per_repeat=per_repeat,
        ci95=[draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]], repeats=repeats, prompts=len(records),
    )


def predicted_tau(
    tree: TreeSpec, own: RankStats, held_out, ours_turns: list[dict], shape: tuple[int, int] | None = None
) -> tuple[float | None, list[float] | None, str]:
    """τ predicted for `tree`, its acceptance by depth, and where it comes from. A held-out
    calibration that kept its answers (training's and `draftheads calibrate`'s) replays the decode's steps on them
    for greedy decoding of `shape` (turns, new tokens per turn), lookup branch included. Else the
    held-out position frequencies when the heads carry a calibration, the eval's own answers (static)
    or the heads' own draft probabilities (dynamic); a lookup branch's copies are then not predicted
    (the value is the heads' tree alone; none without a drafted tree)."""
    replayed = _replayed_tau(tree, held_out, shape)
    if replayed is not None:
        return replayed
    tau, by_depth, source = _drafted_tree_tau(tree, own, held_out, ours_turns)
    if not tree.lookup:
        return tau, by_depth, source
    note = f"the heads' tree alone, what the {tree.lookup}-token lookup branch adds is not predicted"
    return (None, None, f"not predicted ({note})") if tree.kind == "none" else (tau, by_depth, f"{note}: {source}")


def _replayed_tau(tree: TreeSpec, held_out, shape: tuple[int, int] | None) -> tuple[float, list[float], str] | None:
    """τ and acceptance by depth of the decode replayed on the calibration's answers (`RankStats.replayed`).
    Exact for static trees and the lookup branch; a dynamic tree stands as its best rank paths."""
    if not held_out or shape is None or not held_out[0].walks:
        return None
    stats, where = held_out
    accepted = stats.replayed(rank_paths(tree, stats), *shape, tree.lookup, tree.lookup_ngram)
    if not accepted:
        return None  # no step, or a branch of another n-gram than the one the copies were counted with
    branch = f" and the {tree.lookup}-token lookup branch" if tree.lookup else ""
    grown = {"dynamic": f" (the best {tree.budget}, at most {tree.width} per depth)",
             "eagle2": f" (the best {tree.budget} with ranks below {tree.width}, as deep as the calibration's heads)"}.get(tree.kind, "")
    return (
        tau_of(accepted),
        acceptance_by_depth(accepted, max(accepted)),
        f"calibrated on {where}: the decode's steps replayed on its answers, with the tree's rank paths{grown}{branch}",
    )


def rank_paths(tree: TreeSpec, stats: RankStats) -> list[list[int]]:
    """The rank paths a decode of `tree` is replayed with: a static tree's own; a grown tree stands
    as the calibration's most probable paths within its shape (an EAGLE-2 tree's: ranks below its
    width, as deep as its depth; which nodes its expansions reach is not modelled, and depths past
    those the calibration measured are not predicted)."""
    if tree.kind == "static":
        return tree.paths
    if tree.kind == "dynamic":
        return stats.best_paths(tree.budget, tree.width)
    if tree.kind == "eagle2":
        return stats.best_paths(tree.budget, max_rank=tree.width, max_depth=tree.depth or None)
    return []


def prediction_spread(tree: TreeSpec, held_out, shape: tuple[int, int] | None, resamples: int = 100, seed: int = 0) -> float | None:
    """The SD of the replayed τ prediction (`_replayed_tau`) over the calibration's answers resampled
    with replacement: how far the prediction moves with which answers calibrated it (None when the
    prediction is not a replay, or rests on one answer)."""
    if not held_out or shape is None or not held_out[0].walks:
        return None
    stats = held_out[0]
    walks = [w for w in stats.walks if w.turn < shape[0]]
    paths = rank_paths(tree, stats)
    rng = random.Random(seed)
    taus = []
    for _ in range(resamples if len(walks) > 1 else 0):
        accepted = dataclasses.replace(stats, walks=[rng.choice(walks) for _ in walks]).replayed(
            paths, *shape, tree.lookup, tree.lookup_ngram
        )
        if accepted:
            taus.append(tau_of(accepted))
    return statistics.pstdev(taus) if len(taus) > 1 else None


def _drafted_tree_tau(tree: TreeSpec, own: RankStats, held_out, ours_turns: list[dict]) -> tuple[float | None, list[float] | None, str]:
    stats, where = (
        (held_out[0], f"calibrated on {held_out[1]}") if held_out else (own, "calibrated on the baseline's answers to these prompts")
    )
    if tree.kind == "static":
        static = Tree.from_paths(tree.paths)
        return (
            stats.expected_tau(static),
            stats.expected_acceptance_by_depth(static),
            f"{where}: joint rank-path frequencies summed over the tree's nodes",
        )
    if tree.kind == "dynamic" and held_out:
        return (
            expected_tau(stats, tree.budget, tree.width),
            None,
            f"{where}: the best {tree.budget} rank paths, at most {tree.width} per depth",
        )
    if tree.kind == "eagle2" and held_out:
        return (
            stats.expected_tau(Tree.from_paths(rank_paths(tree, stats))),
            None,
            f"{where}: the best {tree.budget} rank paths the EAGLE-2 tree could hold",
        )
    if tree.kind in ("dynamic", "eagle2"):
        predicted = [p for t in ours_turns for p in t["predicted"]]
        return (
            (sum(predicted) / len(predicted) if predicted else None),
            None,
            "the heads' own joint draft probabilities of each dynamic tree's nodes, before verification (uncalibrated)",
        )
    return 1.0, None, "autoregressive: one token per step"


@dataclass
class ReportContext:
    """What the runner decided and measured besides the records, for `build_report`."""

    tree_choice: dict
    """How the tree was chosen."""
    baselines: dict[str, dict]
    """The lookup baselines' settings and sweeps."""
    dtype_note: str
    """Why the eval's dtype."""
    backbone_drift: dict | None
    """A trained backbone's drift from the original (None: frozen)."""


def method_totals(records: list[dict], method: str) -> MethodTotals:
    """`method`'s tokens and the median repeat's seconds over every prompt."""
    tokens = sum(len(t["tokens"]) for r in records for t in r["methods"][method])
    per_repeat = [sum(seconds) for seconds in zip(*(repeat_seconds(r, method) for r in records))]
    seconds = statistics.median(per_repeat)  # one repeat's time: each repeat answers every prompt once
    return MethodTotals(tokens, seconds, per_repeat, tokens / seconds if seconds else None)


def time_breakdown(turns: list[dict], steps: int) -> TimeBreakdown:
    """Where the engine's time went over `turns` of `steps` verification steps."""
    times = {k: sum(t["times"][k] for t in turns) for k in ("prefill", "draft", "verify", "accept", "other")}
    loop = sum(times[k] for k in ("draft", "verify", "accept", "other"))
    return TimeBreakdown(
        seconds=times,
        fraction_of_decode_loop={k: times[k] / loop if loop else None for k in ("draft", "verify", "accept", "other")},
        engine_overhead_fraction=(times["accept"] + times["other"]) / loop if loop else None,
        ms_per_step={k: 1000 * times[k] / max(steps, 1) for k in ("draft", "verify", "accept", "other")},
    )


def build_report(config, draft: DraftModel, tree: TreeSpec, records: list[dict], stats: RankStats, context: ReportContext, held_out=None,
                 epsilon: float = 0.0) -> EvalReport:
    """The report; `stats` are the heads' ranks on the autoregressive answers, `held_out` the
    (stats, source) of calibration data the eval did not see, if any."""
    depth = draft.heads.config.num_heads
    totals = {method: method_totals(records, method) for method in records[0]["methods"]}
    ours_turns = [t for r in records for t in r["methods"][MethodName.OURS]]
    accepted = [a for t in ours_turns for a in t["accepted"]]
    by_category = defaultdict(list)
    for r in records:
        for t in r["methods"][MethodName.OURS]:
            by_category[r["category"]].extend(t["accepted"])
    sampling = config.sampling
    greedy = sampling.temperature == 0
    shape = (
        (max(len(r["methods"][MethodName.OURS]) for r in records), config.max_new_tokens) if greedy else None
    )  # the replay is of greedy acceptance
    tau_predicted, predicted_by_depth, source = predicted_tau(tree, stats, held_out, ours_turns, shape)
    measured_depth = max([depth, *accepted, len(predicted_by_depth or [])])  # a lookup branch goes deeper than the heads
    if predicted_by_depth is not None:
        predicted_by_depth += [0.0] * (measured_depth - len(predicted_by_depth))  # the tree drafts no deeper
    verified = {m: verification(records, m, epsilon) for m in records[0]["methods"]}
    dtype = dtype_name(draft.backbone)
    best = max((m for m in totals if m in BASELINES), key=lambda m: totals[m].tokens_per_s or 0.0)
    pairs = dict.fromkeys([*SPEED_PAIRS, (MethodName.OURS, best)])
    ratios = {pair_key(a, b): speed_ratio(records, a, b) for a, b in pairs if a in totals and b in totals}
    tree_info = tree.describe()
    if tree.kind in ("dynamic", "eagle2"):
        sizes = [s for t in ours_turns for s in t["tree_sizes"]]
        tree_info["mean_nodes"] = sum(sizes) / max(len(sizes), 1)  # drafted and copied nodes
    base = draft.heads.config.base
    return EvalReport(
        base_model=base.hub_id or draft.backbone.location.spec,
        heads=config.heads,
        head_type=draft.heads.config.head_type,
        prompts=config.prompts,
        n_prompts=len(records),
        n_turns=len(ours_turns),
        max_new_tokens=config.max_new_tokens,
        new_tokens=totals[MethodName.OURS].tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        acceptance="greedy" if greedy else "sampling",
        tree=tree_info,
        tree_choice=context.tree_choice,
        steps=len(accepted),
        tau=tau_of(accepted),
        acceptance_by_depth=acceptance_by_depth(accepted, measured_depth),
        tau_by_category={c: tau_of(a) for c, a in sorted(by_category.items())},
        tau_predicted=tau_predicted,
        tau_predicted_sd=prediction_spread(tree, held_out, shape) if tau_predicted is not None else None,
        tau_predicted_source=source,
        acceptance_by_depth_predicted=predicted_by_depth,
        depth_topk_accuracy={f"depth_{d + 1}": {f"top{k}": stats.depth_topk[d][k - 1] for k in (1, 3, 5, 10)} for d in range(depth)},
        calibration_positions=stats.positions,
        methods={str(m): v for m, v in totals.items()},
        speed_ratios=ratios,
        best_baseline=str(best),
        repeats_differ=sorted({m for r in records for m in r.get("repeats_differ", [])}),
        greedy_mismatches=real_mismatches(verified[MethodName.OURS], dtype),
        near_ties=near_ties(verified[MethodName.OURS], dtype),
        hf_generate_mismatches=real_mismatches(verified[MethodName.HF_GENERATE], dtype),
        near_tie_epsilon=epsilon,
        verification=verified if greedy else None,
        answers=[
            {
                "id": r["id"],
                "methods": {
                    m: [{"prompt_ids": t["prompt_ids"], "tokens": t["tokens"]} for t in turns] for m, turns in r["methods"].items()
                },
            }
            for r in records
        ],
        time_breakdown=time_breakdown(ours_turns, len(accepted)),
        baselines=context.baselines,
        seed=sampling.seed,
        config=dataclasses.asdict(config),
        device=str(draft.backbone.lm_head.weight.device),
        dtype=dtype,
        dtype_note=context.dtype_note,
        backbone_mode=draft.backbone_mode,
        backbone_drift=context.backbone_drift,
        hardware=hardware(),
        versions=versions(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
