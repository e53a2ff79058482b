"""Every recipe for a real base model builds at its real shapes and runs through training and
decoding on a shrunk copy of its architecture (train/dryrun.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from draftheads.train.config import load_recipe
from draftheads.train.dryrun import CONFIG_FILE, base_config, dry_run, meta_parts
from draftheads.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REAL = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if (p.parent / CONFIG_FILE).is_file())
PUBLISHED_PARAMETERS = {"llama-3.1-8b-instruct": 8_030_261_248, "qwen3-8b": 8_190_735_360, "vicuna-7b-v1.3": 6_738_415_616}
"""Parameters of each base as its publishers count them (model cards; LLaMA-7B's paper count for Vicuna-7B)."""
QUICK = {"llama-3.1-8b-instruct/medusa1.yaml", "qwen3-8b/eagle3.yaml"}
"""The dry runs of the default suite (one parallel and one sequential family, two config classes); the others are slow."""


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_the_real_recipes_are_shipped():
    assert {name(p) for p in REAL} == {
        "llama-3.1-8b-instruct/eagle3.yaml", "llama-3.1-8b-instruct/medusa1.yaml", "qwen3-8b/eagle3.yaml", "vicuna-7b-v1.3/eagle1.yaml",
        "vicuna-7b-v1.3/hydra-plus.yaml", "vicuna-7b-v1.3/medusa1.yaml", "vicuna-7b-v1.3/medusa2-lora.yaml",
    }


@pytest.mark.parametrize("path", REAL, ids=name)
def test_real_shapes_build_on_the_meta_device(path):
    recipe = load_recipe(path)
    model, heads = meta_parts(recipe, base_config(path, recipe))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[path.parent.name]
    assert all(p.is_meta for p in heads.parameters())
    text = path.read_text()
    for line in ("# draftheads train ", "Aims at:", "draftheads plan "):
        assert line in text, f"{name(path)}: its header lacks {line!r}"


def test_fused_layers_past_the_base_are_refused():
    path = ROOT / "recipes" / "qwen3-8b" / "eagle3.yaml"
    recipe = load_recipe(path, ["heads.fuse_layers=[1, 17, 36]"])
    with pytest.raises(ConfigError, match=r"heads: fuse_layers: layer 36 is out of range \(36 decoder layers"):
        meta_parts(recipe, base_config(path, recipe))


@pytest.mark.parametrize("path", [pytest.param(p, id=name(p), marks=() if name(p) in QUICK else pytest.mark.slow) for p in REAL])
def test_the_recipe_trains_and_decodes_losslessly_on_a_shrunk_base(path, tmp_path):
    report = dry_run(path, tmp_path)
    assert len(report.losses) >= 2 and all(math.isfinite(loss) for loss in report.losses)
    assert report.tokens == 16
    assert report.mismatches == 0


def test_a_recipe_with_no_config_and_no_hub_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes/qwen3-8b/eagle3.yaml").read_text().replace("base: Qwen/Qwen3-8B", "base: someone/not-a-model"))
    from draftheads.utils.errors import ModelLoadError

    with pytest.raises(
        ModelLoadError, match=r"r.yaml: no config.json beside the recipe, and the config of someone/not-a-model cannot be read"
    ) as err:
        base_config(recipe, load_recipe(recipe))
    assert "\n" not in str(err.value)
