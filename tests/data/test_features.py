"""The hidden-state cache: built once, trained from with the same results, refused when it does not fit."""

from __future__ import annotations

import json

import pytest
import torch

from draftheads.data.features import INDEX, build_feature_cache, open_feature_cache
from draftheads.models.backbone import Backbone, BackboneConfig, load_backbone
from draftheads.train.config import load_recipe
from draftheads.train.loop import train
from draftheads.utils.errors import ConfigError


def overrides(base, out, cache=None, **extra) -> list[str]:
    values = {
        "model.base": str(base),
        "data.sources": "[{path: demo:sharegpt, limit: 40}]",
        "data.max_length": 64,
        "data.skip_invalid": "true",
        "data.eval_fraction": 0.1,
        "data.packing": "true",
        "heads.head_type": "medusa",
        "heads.num_heads": 2,
        "train.output_dir": str(out),
        "train.max_steps": 6,
        "train.batch_size": 2,
        "train.lr": 0.01,
        "train.warmup_steps": 2,
        "train.eval_every": 3,
        "train.save_every": 100,
        "train.trackers": "[]",
    }
    if cache is not None:
        values["data.feature_cache.path"] = str(cache)
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def build(base, cache, **extra):
    return build_feature_cache(load_recipe(None, overrides(base, "unused", cache, **extra)), progress=False, log=lambda _: None)


def no_backbone_forward(*args, **kwargs):
    raise AssertionError("training from the cache ran the backbone")


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_training_from_the_cache_follows_the_online_loss_curve(tiny_base, tmp_path, monkeypatch, dtype, tolerance):
    extra = {"data.feature_cache.dtype": dtype, "train.loss.soft_label_weight": 0.5}
    build(tiny_base, tmp_path / "cache", **extra)
    online = train(load_recipe(None, overrides(tiny_base, tmp_path / "online", **extra)), progress=False)
    monkeypatch.setattr(Backbone, "features", no_backbone_forward)
    cached = train(load_recipe(None, overrides(tiny_base, tmp_path / "cached", tmp_path / "cache", **extra)), progress=False)
    assert len(cached.losses) == 6
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(online.losses), rtol=tolerance, atol=0)
    if dtype == "bfloat16":
        assert cached.losses != online.losses  # the rounded features really were read
    for a, b in zip(online.evals, cached.evals):
        torch.testing.assert_close(torch.tensor(b["loss"]), torch.tensor(a["loss"]), rtol=tolerance, atol=0)


@pytest.mark.slow  # two trainings, about 10 s
def test_cached_teacher_top_k_over_the_whole_vocabulary_equals_online_soft_labels(tiny_base, tmp_path):
    vocab = load_backbone(BackboneConfig(base=str(tiny_base))).vocab_size
    extra = {"data.feature_cache.dtype": "float32", "data.feature_cache.teacher_topk": vocab, "train.loss.soft_label_weight": 1.0}
    build(tiny_base, tmp_path / "cache", **extra)
    online = train(load_recipe(None, overrides(tiny_base, tmp_path / "online", **extra)), progress=False)
    # Soft labels from the cached top-k: neither the backbone nor a teacher projection runs.
    cached = train(load_recipe(None, overrides(tiny_base, tmp_path / "cached", tmp_path / "cache", **extra)), progress=False)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(online.losses), rtol=1e-4, atol=0)
    partial = load_recipe(None, overrides(tiny_base, "x", tmp_path / "cache5", **{**extra, "data.feature_cache.teacher_topk": 5}))
    build_feature_cache(partial, progress=False, log=lambda _: None)
    top5 = train(
        load_recipe(None, overrides(tiny_base, tmp_path / "top5", tmp_path / "cache5", **{**extra, "data.feature_cache.teacher_topk": 5})),
        progress=False,
    )
    assert top5.losses != cached.losses  # a truncated teacher is a different (cheaper) target


def test_an_interrupted_build_resumes_at_the_first_missing_shard(tiny_base, tmp_path):
    cache = tmp_path / "cache"
    written = []

    def stop_after_two(name):
        written.append(name)
        if len(written) == 2:
            raise KeyboardInterrupt

    recipe = load_recipe(None, overrides(tiny_base, "unused", cache, **{"data.feature_cache.rows_per_shard": 2}))
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(recipe, progress=False, on_shard=stop_after_two, log=lambda _: None)
    assert not (cache / INDEX).exists()
    first = {name: (cache / name).stat().st_mtime_ns for name in written}
    again = []
    build_feature_cache(recipe, progress=False, on_shard=again.append, log=lambda _: None)
    assert not set(again) & set(written) and again  # finished shards are not recomputed
    assert all((cache / name).stat().st_mtime_ns == t for name, t in first.items())
    index = json.loads((cache / INDEX).read_text())
    assert sum(len(s["shards"]) for s in index["splits"].values()) == len(written) + len(again)
    assert not list(cache.glob(".*.tmp"))


def test_a_cache_that_does_not_fit_the_recipe_is_refused(tiny_base, tmp_path, demo_tokenizer):
    build(tiny_base, tmp_path / "cache")
    backbone = load_backbone(BackboneConfig(base=str(tiny_base)))
    with pytest.raises(ConfigError, match=r"data_fingerprint \w+ \(cache\) vs \w+ \(recipe\)"):
        open_feature_cache(load_recipe(None, overrides(tiny_base, "x", tmp_path / "cache", **{"data.max_length": 32})), backbone)
    # Another base model: a different hidden size.
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    other = tmp_path / "other-base"
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), hidden=32)).save_pretrained(other)
    demo_tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match=r"hidden_size 64 \(cache\) vs 32 \(recipe\)"):
        open_feature_cache(load_recipe(None, overrides(other, "x", tmp_path / "cache")), load_backbone(BackboneConfig(base=str(other))))
    with pytest.raises(ConfigError, match="has no index.json: build it first"):
        open_feature_cache(load_recipe(None, overrides(tiny_base, "x", tmp_path / "nothing")), backbone)
    with pytest.raises(ConfigError, match="holds a feature cache of other settings"):
        build(tiny_base, tmp_path / "cache", **{"data.feature_cache.dtype": "float32"})


def test_a_cache_without_the_layers_a_family_reads_is_refused(tiny_base, tmp_path, monkeypatch):
    build(tiny_base, tmp_path / "cache")
    recipe = load_recipe(None, overrides(tiny_base, "x", tmp_path / "cache"))
    monkeypatch.setattr(type(recipe.heads), "feature_layers", lambda self: (0, 1))  # as an EAGLE-3 family declares
    with pytest.raises(ConfigError, match=r"layers \[0, 1\] are not cached \(cache has \[-1\]\)"):
        open_feature_cache(recipe, load_backbone(BackboneConfig(base=str(tiny_base))))


@pytest.mark.slow  # two joint trainings, about 12 s
def test_joint_training_with_the_cached_teacher_equals_the_adapter_disabled_teacher(tiny_base, tmp_path):
    """Medusa-2 with train.backbone.teacher=cache: the original's distribution comes from the cache
    (whole vocabulary here, so it is exact) and the backbone's stale cached features are not used."""
    vocab = load_backbone(BackboneConfig(base=str(tiny_base))).vocab_size
    extra = {
        "data.feature_cache.dtype": "float32", "data.feature_cache.teacher_topk": vocab,
        "train.backbone.mode": "lora", "train.backbone.lora.dropout": 0.0, "train.lr": 0.003,
    }
    build(tiny_base, tmp_path / "cache", **extra)
    online = train(load_recipe(None, overrides(tiny_base, tmp_path / "online", **extra)), progress=False)
    cached = train(
        load_recipe(None, overrides(tiny_base, tmp_path / "cached", tmp_path / "cache", **{**extra, "train.backbone.teacher": "cache"})),
        progress=False,
    )
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(online.losses), rtol=1e-4, atol=0)
    # With LoRA the original stays at hand (adapter disabled), so the drift is measured either way.
    assert cached.evals[-1]["drift"]["agreement"] == online.evals[-1]["drift"]["agreement"]
    build_feature_cache(
        load_recipe(None, overrides(tiny_base, "x", tmp_path / "cache0", **{**extra, "data.feature_cache.teacher_topk": 0})),
        progress=False,
        log=lambda _: None,
    )
    no_teacher = load_recipe(
        None,
        overrides(
            tiny_base,
            tmp_path / "bad",
            tmp_path / "cache0",
            **{**extra, "train.backbone.teacher": "cache", "data.feature_cache.teacher_topk": 0},
        ),
    )
    with pytest.raises(ConfigError, match="teacher=cache needs the teacher top-k"):
        train(no_teacher, progress=False)


@pytest.mark.slow  # two trainings, about 8 s
def test_a_reduced_draft_vocabulary_trains_the_same_from_the_cache_as_online(tiny_base, tmp_path):
    # The map is counted from the cache's token rows in one case and from the tokenised rows in the
    # other, and the cached teacher top-k is renormalised over it as the online teacher is: the same
    # losses only if both agree.
    vocab = load_backbone(BackboneConfig(base=str(tiny_base))).vocab_size
    extra = {
        "data.feature_cache.dtype": "float32",
        "data.feature_cache.teacher_topk": vocab,
        "train.loss.soft_label_weight": 0.5,
        "heads.draft_vocab_size": 300,
    }
    build(tiny_base, tmp_path / "cache", **extra)
    online = train(load_recipe(None, overrides(tiny_base, tmp_path / "online", **extra)), progress=False)
    cached = train(load_recipe(None, overrides(tiny_base, tmp_path / "cached", tmp_path / "cache", **extra)), progress=False)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(online.losses), rtol=1e-5, atol=0)
    coverage = online.evals[-1]["coverage"]
    assert all(0.3 < c < 1.0 for c in coverage) and coverage == cached.evals[-1]["coverage"]
