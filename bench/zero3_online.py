"""Claim: under DeepSpeed ZeRO-3 on 2 CPU processes, heads train online on the demo model with the
frozen target's decoder layers sharded (issue 33): the features of a batch equal one process's,
the first step's loss is the same (within 1e-6 relative) and each process holds half of the
layers' matrices. Measured beside it, not claimed: each process's peak memory against one
process's, against the same launch with DeepSpeed's default gathering (no bound of one layer
ahead, train/joint.py `gather_one_layer_ahead`), and against what `draftheads plan` says.

    python bench/zero3_online.py [--record zero3-online-demo]

For each recipe, `bench/sharded_probe.py` runs in one process (2 accumulation steps) and under
`accelerate launch --config_file recipes/accelerate/deepspeed-zero3.yaml` (2 processes over gloo,
batch as the recipe): as shipped, with `--deepspeed-defaults`, and both again with
`MALLOC_MMAP_THRESHOLD_=131072` (glibc hands large freed blocks back at once, which separates memory
held from memory the allocator keeps), all on the same 200 ShareGPT conversations; the probe sets
up the run, computes the features of the first two training rows, takes 3 optimizer steps and
reports the first one's loss, the layers' shares and every process's peak resident set size and
its resident set after set-up and after the steps.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from draftheads.train.plan import GIB, Launch, make_plan
from draftheads.utils.paths import accelerate_config_path

from records import Record, Table, markdown_table

RECIPES = ("recipes/smollm2-135m/medusa1.yaml", "recipes/smollm2-135m/eagle3.yaml")
"""A parallel family on the final hidden state, a sequential one on three fused layers."""
PROBE = Path(__file__).with_name("sharded_probe.py")


def probe(out: Path, recipe: str, overrides: list[str], zero3: bool, *flags: str, env: dict | None = None) -> dict:
    """The probe's findings, in one process or under ZeRO-3 on two."""
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_path("deepspeed-zero3"))] if zero3 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, *launcher, str(PROBE), *flags, str(out), recipe, *overrides], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{recipe}: the probe failed{' under ZeRO-3' if zero3 else ''}:\n{done.stderr[-3000:]}")
    return torch.load(out)


def gib(found: dict | None, column: int) -> str:
    """One memory reading of every process (0: peak, 1: after the steps, 2: after set-up)."""
    return "-" if found is None else ", ".join(f"{p[column] / GIB:.2f}" for p in found["peaks"])


def exactness(recipe: str, one: dict, two: dict) -> list[str]:
    """Features, first loss and the layers' shares: one process against ZeRO-3 on two."""
    equal = all(torch.equal(one["features"][k], two["features"][k]) for k in one["features"])
    share = two["shares"][0]
    return [
        recipe, f"{len(one['features'])} layer(s): " + ("equal bit for bit" if equal else "DIFFER"),
        f"{one['loss']:.6f} / {two['loss']:.6f}" + ("" if abs(one["loss"] - two["loss"]) <= 1e-6 * abs(one["loss"]) else " DIFFER"),
        f"{share['held']:,} of {share['sharded']:,} sharded ({share['sharded'] / share['total']:.1%} of {share['total']:,})",
    ]


def memory(recipe: str, setting: str, one: dict | None, two: dict, planned: str) -> list[str]:
    return [recipe, setting, *(f"{gib(one, c)} / {gib(two, c)}" for c in (0, 2, 1)), planned]


def rows(recipe: str, overrides: list[str], work: Path) -> tuple[list[str], list[list[str]]]:
    """One recipe: one process against ZeRO-3 on two as shipped, with DeepSpeed's default gathering,
    and both with glibc returning large freed blocks to the system at once."""
    def run(name: str, zero3: bool, *flags: str, env: dict | None = None) -> dict:
        accumulate = [] if zero3 else ["train.grad_accum=2"]
        return probe(work / f"{name}.pt", recipe, [*overrides, f"train.output_dir={work / name}", *accumulate], zero3, *flags, env=env)

    trimmed = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    one, two = run("one", False), run("two", True)
    loose = run("loose", True, "--deepspeed-defaults")
    one_trim, two_trim = run("one-trim", False, env=trimmed), run("two-trim", True, env=trimmed)
    planned = f"{make_plan(recipe, overrides, Launch(2, 'zero3', 'cpu', None)).total / GIB:.2f} GiB"
    return exactness(recipe, one, two), [
        memory(recipe, "as shipped", one, two, planned),
        memory(recipe, "DeepSpeed's default gathering", None, loose, planned),
        memory(recipe, "MALLOC_MMAP_THRESHOLD_=131072", one_trim, two_trim, planned),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--record", help="write the tables as bench/records/NAME/record.json")
    args = parser.parse_args()
    exact = Table(["recipe", "features of a batch (1 process vs ZeRO-3)", "first loss (1 / ZeRO-3)", "layer elements held per process"], [])
    held = Table(["recipe", "setting", "peak RSS (GiB): 1 process / each ZeRO-3 process", "after set-up", "after 3 steps",
                  "plan per ZeRO-3 process"], [])
    for recipe in RECIPES:
        with tempfile.TemporaryDirectory() as scratch:
            overrides = [
                f"data.sources=[{{path: demo:sharegpt, limit: {args.conversations}}}]",
                "train.trackers=[]",
                "train.resume_from=null",
                "train.seed=7",
            ]
            row, readings = rows(recipe, overrides, Path(scratch))
        exact.rows.append(row)
        held.rows += readings
        print(markdown_table(exact), markdown_table(held), sep="\n\n", flush=True)
    if args.record:
        record = Record.measured_now(args.record, "python " + " ".join(sys.argv), "float32", {"zero3": exact, "memory": held})
        print(f"wrote {record.write()}")
    wrong = [r[0] for r in exact.rows if "DIFFER" in r[1] + r[2]]
    if wrong:
        raise SystemExit(f"outside the claim (features equal, the first loss within 1e-6 relative): {', '.join(wrong)}")


if __name__ == "__main__":
    main()
