"""`draftheads plan` (train/plan.py): every real recipe fits the launch its header names, what
cannot fit is refused with the term that does not, and sharding divides what each strategy shards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from draftheads.train.plan import GIB, Launch, launch_of, make_plan

ROOT = Path(__file__).resolve().parents[2]
REAL = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if (p.parent / "config.json").is_file())


def terms(plan) -> dict[str, int]:
    return {term.name: term.bytes for term in plan.memory}


def header_launch(path: Path) -> str:
    """The accelerate config a recipe's header launches with."""
    first = path.read_text().splitlines()[0]
    return first.split("--accelerate-config ")[1].split()[0]


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_recipe_fits_eight_80_gb_gpus(path):
    plan = make_plan(path, [], launch_of(header_launch(path), 8, 80))
    assert plan.refusal() is None, plan.refusal()
    assert plan.flops_per_token > 2 * 6e9  # at least the forward of a 6.7B-8B base... or a trained one
    assert 4 * GIB < plan.total < 80 * GIB
    stated = re.search(r"#   ([\d.]+) GiB per process \(largest: ([a-z ]+) ([\d.]+) GiB\)", path.read_text())
    worst = max(plan.memory, key=lambda term: term.bytes)
    assert stated and (float(stated[1]), stated[2], float(stated[3])) == (
        round(plan.total / GIB, 1),
        worst.name,
        round(worst.bytes / GIB, 1),
    ), "the header's plan is stale"


def test_a_full_backbone_of_an_8b_model_on_one_24_gb_gpu_is_refused_naming_the_term():
    path = ROOT / "recipes/llama-3.1-8b-instruct/medusa1.yaml"
    plan = make_plan(path, ["train.backbone.mode=full"], launch_of("single-gpu", 1, 24))
    assert plan.refusal().startswith(f"{path}: needs ")
    assert "the largest term is backbone activations" in plan.refusal() and "gradient_checkpointing: true" in plan.refusal()
    checkpointed = make_plan(
        path, ["train.backbone.mode=full", "train.backbone.gradient_checkpointing=true"], launch_of("single-gpu", 1, 24)
    )
    assert "the largest term is optimizer state" in checkpointed.refusal() and "deepspeed-zero2" in checkpointed.refusal()
    result = subprocess.run(
        [
            sys.executable, "-m", "draftheads.scripts.cli", "plan", str(path), "train.backbone.mode=full", "--accelerate-config",
            "single-gpu", "--gpu-memory", "24"
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "the largest term is backbone activations" in result.stderr.strip().splitlines()[-1]


def test_each_strategy_shards_what_it_shards():
    path = ROOT / "recipes/vicuna-7b-v1.3/medusa2-lora.yaml"
    single, ddp = (terms(make_plan(path, [], Launch(n, s, "cuda", None))) for n, s in ((1, "single"), (4, "ddp")))
    zero2, zero3 = (terms(make_plan(path, [], Launch(4, s, "cuda", None))) for s in ("zero2", "zero3"))
    assert ddp["gradients"] == 2 * single["gradients"]  # DDP's buckets hold a second copy
    assert (zero2["gradients"], zero2["optimizer state"], zero2["trained weights"]) == (
        single["gradients"] // 4,
        single["optimizer state"] // 4,
        single["trained weights"],
    )
    assert zero3["trained weights"] == single["trained weights"] // 4
    assert zero3["base weights"] == single["base weights"] // 4  # a trained backbone is prepared, so sharded
    frozen = ROOT / "recipes/vicuna-7b-v1.3/medusa1.yaml"
    whole = terms(make_plan(frozen, [], Launch(1, "single", "cuda", None)))["base weights"]
    assert (
        terms(make_plan(frozen, [], Launch(4, "zero2", "cuda", None)))["base weights"] == whole
    )  # a frozen base is not prepared under ZeRO-2
    # ZeRO-3 shards a frozen base's 32 layers; the embedding and lm_head (2 x 32000 x 4096) and the final norm stay whole
    outside = (2 * 32000 * 4096 + 4096) * 2
    zero3_frozen = terms(make_plan(frozen, [], Launch(4, "zero3", "cuda", None)))
    assert zero3_frozen["base weights"] == outside + (whole - outside) // 4
    assert zero3_frozen["gathered layers"] == 2 * (whole - outside) // 32  # features computed online: a layer running, the next prefetched
    cached = terms(make_plan(frozen, ["data.feature_cache.path=cache"], Launch(4, "zero3", "cuda", None)))
    assert "gathered layers" not in cached  # features read from disk: the layers never run


def test_qlora_holds_the_base_in_about_half_a_byte_per_weight():
    path = ROOT / "recipes/vicuna-7b-v1.3/medusa2-lora.yaml"
    four = terms(make_plan(path, ["train.backbone.lora.load_in_bits=4"], Launch(1, "single", "cuda", None)))["base weights"]
    assert 3.5 * GIB < four < 4.5 * GIB  # 6.5B linear weights at 0.52 B, two 32000 x 4096 embeddings at 2 B


def test_activations_grow_with_the_batch_and_the_cache_removes_the_backbone_forward():
    path = ROOT / "recipes/llama-3.1-8b-instruct/eagle3.yaml"
    one, two = (terms(make_plan(path, [f"train.batch_size={b}"], Launch(1, "single", "cuda", None))) for b in (1, 2))
    assert 0 < one["head activations"] < two["head activations"] <= 2 * one["head activations"]
    cached = terms(make_plan(path, ["data.feature_cache.path=/nowhere"], Launch(1, "single", "cuda", None)))
    assert "backbone forward" in one and "backbone forward" not in cached
