"""Which data trains better heads for the same training compute: the model's own answers
(self-distillation, `gen-data`) or teacher-forced soft labels on ShareGPT's original answers (the
backbone's distribution at every position of the human-written text: one forward pass, no
generation)?

    python bench/data_arms.py [--family medusa1] [--conversations 150] [--steps N] [--limit 16]

Arm A is `recipes/smollm2-135m/<family>-quality.yaml` as trained (its heads must exist). Arm B
builds a hidden-state cache over the first `--conversations` ShareGPT conversations (original
answers, bf16 backbone; timed), then trains the same recipe on it with soft labels only (KL to the
backbone's distribution over the draft vocabulary at every answer position), by default for the
same steps and batch: the same training compute. `--steps` trains arm B longer (what the larger
data set a teacher-forced hour gives is worth when it is used). Both heads then decode the same
MT-bench questions greedily in bf16; τ, and the heads' held-out top-1 by depth, are printed side by
side. Resumable: each stage is skipped when its output exists. A cache built earlier is used as it
is: build it with the EAGLE-3 recipe, whose layers include every other family's (training refuses a
cache that lacks a layer the family reads, naming it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.eval.metrics import acceptance_by_depth, tau_of
from draftheads.eval.prompts import load_prompts
from draftheads.eval.runner import Runner, engine_method, run_prompts
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.utils.device import resolve_dtype
from families import load_family

OUT = Path("bench/out/data_arms")


def paths(family: str, conversations: int, steps: int | None) -> tuple[str, Path, Path, Path, Path]:
    """Recipe, arm A's run, arm B's run, arm B's cache and this comparison's output folder (the
    first comparison's names are kept: Medusa-1, 150 conversations, the same steps)."""
    recipe = f"recipes/smollm2-135m/{family}-quality.yaml"
    cache = Path("outputs/smollm2-135m-sharegpt-teacher-cache" + ("" if conversations == 150 else f"-{conversations}"))
    suffix = "" if (family, conversations, steps) == ("medusa1", 150, None) else f"-{conversations}" + (f"-{steps}steps" if steps else "")
    arm_b = Path(f"outputs/smollm2-135m-{family}-teacher-forced{suffix}")
    return (
        recipe,
        Path(f"outputs/smollm2-135m-{family}-quality"),
        arm_b,
        cache,
        OUT if not suffix else OUT.with_name(f"data_arms-{family}{suffix}"),
    )


def arm_b_overrides(conversations: int, cache: Path, arm_b: Path, steps: int | None) -> list[str]:
    return [f"data.sources=[{{path: demo:sharegpt, limit: {conversations}}}]", f"data.feature_cache.path={cache}",
            f"train.output_dir={arm_b}", "train.loss.soft_label_weight=1.0"] + ([f"train.max_steps={steps}"] if steps else [])


def timed(command: list[str], times: dict, key: str, out: Path) -> None:
    if key in times:
        return
    start = time.perf_counter()
    subprocess.run(command, check=True)
    times[key] = time.perf_counter() - start
    (out / "seconds.json").write_text(json.dumps(times, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="medusa1", choices=["medusa1", "hydra", "clover", "eagle3"])
    parser.add_argument("--conversations", type=int, default=150)
    parser.add_argument("--steps", type=int, default=None, help="arm B's training steps (default: the recipe's, as arm A)")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--width", type=int, default=4)
    args = parser.parse_args()
    recipe, arm_a, arm_b, cache, out = paths(args.family, args.conversations, args.steps)
    out.mkdir(parents=True, exist_ok=True)
    if not (arm_a / "heads").is_dir():
        raise SystemExit(f"{arm_a / 'heads'}: train arm A first: draftheads train {recipe}")
    seconds_path = out / "seconds.json"
    times = json.loads(seconds_path.read_text()) if seconds_path.is_file() else {}
    overrides = arm_b_overrides(args.conversations, cache, arm_b, args.steps)
    if not (cache / "index.json").is_file():
        timed(["draftheads", "cache-features", recipe, "model.dtype=bfloat16", *overrides], times, "cache_b", out)
    timed(["draftheads", "train", recipe, *overrides], times, "train_b", out)
    index = json.loads((cache / "index.json").read_text())
    built = f"in {times['cache_b']:.0f} s" if "cache_b" in times else "(built earlier)"
    print(f"arm B cache: {index['splits']['train']['tokens']:,} training tokens {built}; trained in {times['train_b']:.0f} s")

    dtype, note = resolve_dtype("auto", torch.device("cpu"))
    print(f"dtype: {note}")
    base = load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype=dtype))
    methods, arms = (
        [],
        {"A: own answers (self-distillation)": arm_a, f"B: {args.conversations} ShareGPT conversations, teacher-forced soft labels": arm_b},
    )
    # The same tree for both arms: only the heads differ (a cost-chosen tree would differ between them).
    tree = TreeSpec("dynamic", budget=args.budget, width=args.width)
    for label, folder in arms.items():
        draft = load_family(folder / "heads", base, dtype)
        methods.append(engine_method(label, Engine(draft.backbone, draft.heads, tree)))
    eos = Engine(base).default_eos()
    runner = Runner(
        methods,
        ChatFormatter(base.tokenizer, model_name=base.location.spec),
        GenerationConfig(max_new_tokens=args.max_new_tokens, eos_token_ids=eos, seed=0),
        0.0,
    )
    fingerprint = json.dumps(["records 2", args.limit, args.max_new_tokens, dtype, args.conversations, args.budget, args.width])
    records = run_prompts(runner, load_prompts("mt-bench", args.limit), out / "decode", fingerprint, 0, progress=True)
    print(
        f"\n{len(records)} MT-bench questions, both turns, {args.max_new_tokens} new tokens, greedy, {dtype}, "
        f"dynamic tree {args.budget} x {args.width}"
    )
    print("| arm | held-out top-1 by depth (own held-out rows) | τ | accepted per step by depth |")
    print("| --- | --- | --- | --- |")
    for label, folder in arms.items():
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        accepted = [a for r in records for t in r["methods"][label] for a in t["accepted"]]
        print(f"| {label} | {' / '.join(f'{v:.3f}' for v in last['top1'])} | {tau_of(accepted) or 1.0:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in acceptance_by_depth(accepted, 4))} |")


if __name__ == "__main__":
    main()
