"""Medusa-2: joint training of the heads with a LoRA or full backbone, on a tiny base model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from draftheads.data.collate import Collator
from draftheads.data.dataset import build_datasets
from draftheads.train.drift import drift_counts, drift_summary
from draftheads.models.backbone import LAST, BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.train.config import BackboneTraining, load_recipe
from draftheads.train.joint import TrainableBackbone
from draftheads.train.loop import train
from draftheads.train.schedules import joint_lr_lambdas, ramp
from draftheads.utils.errors import ConfigError, ModelLoadError

from helpers import launch, overrides


def joint_settings(mode: str = "lora", **extra) -> dict:
    settings = {
        "train.backbone.mode": mode,
        "train.backbone.lora.rank": 4,
        "train.backbone.lora.dropout": 0.0,
        "train.backbone.heads_lr_multiplier": 10,
        "train.lr": 0.003,
        "train.max_steps": 6,
    }
    settings.update(extra)
    return settings


def joint(base, out, mode: str = "lora", **extra) -> list[str]:
    return overrides(base, out, **joint_settings(mode, **extra))


def a_batch(base, tokenizer, rows: int = 2) -> dict:
    recipe = load_recipe(None, overrides(base, "unused"))
    train_set, _, _, _ = build_datasets(recipe.data, tokenizer, str(base), False)
    return Collator(pad_token_id=tokenizer.pad_token_id or 0)([train_set[i] for i in range(rows)])


def logits_of(backbone, batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = backbone.features(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")).features[LAST]
        return backbone.lm_head(hidden)


def test_lora_joint_training_exports_an_adapter_that_reloads_with_its_heads(varied_base, tmp_path):
    out = tmp_path / "lora"
    result = train(load_recipe(None, joint(varied_base, out, **{"train.max_steps": 20, "train.eval_every": 10})), progress=False)
    assert sum(result.losses[-4:]) < sum(result.losses[:4]), result.losses
    heads_dir = out / "heads"
    assert sorted(p.name for p in (heads_dir / "adapter").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    adapter = load_file(str(heads_dir / "adapter" / "adapter_model.safetensors"))
    assert all("lora_" in k for k in adapter) and any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)

    # The adapter and heads saved are bit for bit the trained ones (the last checkpoint's).
    checkpoint = load_file(str(sorted((out / "checkpoints").iterdir())[-1] / "model.safetensors"))
    for key, value in adapter.items():  # peft drops the adapter's name ("default") from saved keys
        assert torch.equal(value, checkpoint["backbone." + key.replace(".weight", ".default.weight")]), key
    exported_heads = load_file(str(heads_dir / "model.safetensors"))
    assert all(torch.equal(v, checkpoint[f"heads.{k}"]) for k, v in exported_heads.items())

    # from_pretrained restores backbone + heads: the merged backbone computes what base + adapter does.
    draft = DraftModel.from_pretrained(heads_dir)
    assert draft.backbone_mode == "lora"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(varied_base), str(heads_dir / "adapter")).eval()
    original = load_backbone(BackboneConfig(base=str(varied_base)))
    batch = a_batch(varied_base, draft.backbone.tokenizer)
    ids = batch["input_ids"]
    with torch.no_grad():
        expected = unmerged(ids, attention_mask=batch["attention_mask"]).logits
        merged = draft.backbone.model(ids, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, logits_of(original, batch), atol=1e-4), "the adapter changed nothing"
    for key, value in exported_heads.items():
        assert torch.equal(draft.heads.state_dict()[key], value)

    summary = json.loads((heads_dir / "training.json").read_text())
    assert summary["backbone"]["mode"] == "lora" and summary["backbone"]["rank"] == 4
    assert 0.0 <= summary["backbone"]["drift"]["agreement"] <= 1.0
    card = (heads_dir / "README.md").read_text()
    assert "Backbone: changed by training" in card and "greedy agreement with the original" in card
    assert [e["drift"]["agreement"] for e in result.evals][0] == 1.0  # step 0: the adapter starts as a no-op


def test_the_adapter_disabled_teacher_is_the_original_model(varied_base, tmp_path):
    backbone = load_backbone(BackboneConfig(base=str(varied_base)))
    trainable = TrainableBackbone(backbone, BackboneTraining(mode="lora"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trainable.module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # as if trained: the adapted model now differs
    batch = a_batch(varied_base, backbone.tokenizer)
    original = load_backbone(BackboneConfig(base=str(varied_base)))
    expected = torch.log_softmax(logits_of(original, batch), dim=-1)
    teacher = torch.log_softmax(trainable.original_lm_head()(trainable.original_hidden(batch)), dim=-1)
    torch.testing.assert_close(teacher, expected, rtol=0, atol=1e-5)
    adapted = torch.log_softmax(logits_of(backbone, batch), dim=-1)
    assert (adapted - expected).abs().max() > 1e-2
    # After the teacher ran, the adapter is on again.
    assert (torch.log_softmax(logits_of(backbone, batch), dim=-1) - expected).abs().max() > 1e-2


def test_the_full_backbone_reference_copy_stays_the_original(varied_base):
    backbone = load_backbone(BackboneConfig(base=str(varied_base)))
    trainable = TrainableBackbone(backbone, BackboneTraining(mode="full"))
    assert {id(p) for p in trainable.trainable_parameters()} == {id(p) for p in backbone.model.parameters()}
    with torch.no_grad():
        for param in backbone.model.parameters():
            param.add_(0.01)
    batch = a_batch(varied_base, backbone.tokenizer)
    original = load_backbone(BackboneConfig(base=str(varied_base)))
    teacher = trainable.original_lm_head()(trainable.original_hidden(batch))
    assert torch.equal(teacher, logits_of(original, batch))


def test_full_joint_training_exports_a_backbone_folder(varied_base, tmp_path):
    out = tmp_path / "full"
    train(load_recipe(None, joint(varied_base, out, mode="full", **{"train.backbone.objective": "lm"})), progress=False)
    heads_dir = out / "heads"
    assert (heads_dir / "backbone" / "config.json").is_file() and not (heads_dir / "adapter").exists()
    draft = DraftModel.from_pretrained(heads_dir)
    assert draft.backbone_mode == "full"
    checkpoint = load_file(str(sorted((out / "checkpoints").iterdir())[-1] / "model.safetensors"))
    trained = draft.backbone.model.state_dict()
    for key, value in checkpoint.items():
        if key.startswith("backbone."):
            assert torch.equal(trained[key[len("backbone.") :]], value), key
    original = load_backbone(BackboneConfig(base=str(varied_base))).model.state_dict()
    assert any(not torch.equal(trained[k], original[k]) for k in original)
    with pytest.raises(ModelLoadError, match="carry their own trained backbone"):
        DraftModel.from_pretrained(heads_dir, base=str(varied_base))


def test_a_merged_adapter_exports_the_same_model_as_the_adapter(varied_base, tmp_path):
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    train(load_recipe(None, joint(varied_base, adapter)), progress=False)
    train(load_recipe(None, joint(varied_base, merged, **{"train.backbone.merge_adapter": "true"})), progress=False)
    assert (merged / "heads" / "backbone" / "model.safetensors").is_file() and not (merged / "heads" / "adapter").exists()
    a, b = DraftModel.from_pretrained(adapter / "heads"), DraftModel.from_pretrained(merged / "heads")
    batch = a_batch(varied_base, a.backbone.tokenizer)
    torch.testing.assert_close(logits_of(b.backbone, batch), logits_of(a.backbone, batch), rtol=0, atol=1e-5)
    assert json.loads((merged / "heads" / "training.json").read_text())["backbone"]["merged"] is True


def test_two_stage_training_keeps_the_backbone_still_until_the_joint_stage(varied_base, tmp_path):
    out = tmp_path / "two-stage"
    extra = {
        "train.backbone.heads_only_steps": 3,
        "train.save_every": 3,
        "train.keep_checkpoints": 5,
        "train.backbone.head_weight_warmup_steps": 2,
    }
    train(load_recipe(None, joint(varied_base, out, **extra)), progress=False)
    stage_one = load_file(str(out / "checkpoints" / "step-00000003" / "model.safetensors"))
    final = load_file(str(out / "checkpoints" / "step-00000006" / "model.safetensors"))
    # Checkpoints hold what trains only: the adapter, not the frozen base weights it sits on.
    assert all("lora_" in k for k in stage_one if k.startswith("backbone."))
    lora_b = [k for k in stage_one if "lora_B" in k]
    assert lora_b and all(stage_one[k].abs().sum() == 0 for k in lora_b)
    assert any(final[k].abs().sum() > 0 for k in lora_b)
    heads = [k for k in stage_one if k.startswith("heads.")]
    assert any(not torch.equal(stage_one[k], final[k]) for k in heads)


def test_lora_crash_and_resume_reproduce_the_uninterrupted_run(varied_base, tmp_path):
    settings = {"train.save_every": 3, "train.resume_from": "latest", "train.backbone.heads_only_steps": 1}
    straight = tmp_path / "straight"
    train(load_recipe(None, joint(varied_base, straight, **settings)), progress=False)
    resumed = tmp_path / "resumed"
    recipe = load_recipe(None, joint(varied_base, resumed, **settings))

    def crash(step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, on_step=crash, progress=False)
    train(recipe, progress=False)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(straight / "heads" / name)), load_file(str(resumed / "heads" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resuming_a_checkpoint_of_other_heads_is_refused(varied_base, tmp_path):
    out = tmp_path / "run"
    settings = {"train.max_steps": 2, "train.save_every": 2, "train.resume_from": "latest"}
    train(load_recipe(None, joint(varied_base, out, **settings)), progress=False)
    with pytest.raises(ConfigError, match="does not hold this recipe's trained weights: missing"):
        train(load_recipe(None, joint(varied_base, out, **{**settings, "train.max_steps": 4, "heads.num_heads": 3})), progress=False)


def test_gradient_checkpointing_computes_the_same_updates(varied_base, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    train(load_recipe(None, joint(varied_base, plain, **{"train.max_steps": 3})), progress=False)
    train(
        load_recipe(None, joint(varied_base, checkpointed, **{"train.max_steps": 3, "train.backbone.gradient_checkpointing": "true"})),
        progress=False,
    )
    a = load_file(str(plain / "heads" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(checkpointed / "heads" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "config, extra",
    # Two processes of joint training take about 25 s each: the slow set runs them (the default run keeps the
    # frozen-backbone DDP test in tests/train/test_loop.py).
    [pytest.param(config, extra, marks=pytest.mark.slow)
     for config, extra in [("deepspeed-zero2", {}), ("deepspeed-zero3", {}), ("cpu-2proc", {"train.backbone.heads_only_steps": 2})]],
)
def test_two_processes_agree_with_one(config, extra, varied_base, tmp_path):
    """LoRA joint training on 2 processes (DeepSpeed ZeRO-2 and ZeRO-3; DDP through a heads-only
    stage, where the backbone gets no gradient) equals 1 process with 2 accumulation steps."""
    steps = {"train.max_steps": 4, "train.seed": 7, **extra}
    one, two = tmp_path / "one", tmp_path / "two"
    launch("cpu", varied_base, one, **joint_settings(**steps, **{"train.grad_accum": 2}))
    launch(config, varied_base, two, **joint_settings(**steps))
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(one / "heads" / name)), load_file(str(two / "heads" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_drift_counts_agreement_and_perplexity_exactly():
    lm_head = torch.nn.Linear(4, 5, bias=False)
    torch.manual_seed(0)
    hidden = torch.randn(1, 6, 4)
    other = hidden.clone()
    other[0, 2] = -other[0, 2]  # one position's prediction changes
    batch = {"input_ids": torch.tensor([[0, 1, 2, 3, 4, 0]]), "loss_mask": torch.tensor([[0, 1, 1, 1, 1, 1]])}
    same = drift_summary(drift_counts(hidden, hidden, batch, lm_head, lm_head))
    assert same["positions"] == 5 and same["agreement"] == 1.0
    assert same["perplexity_original"] == pytest.approx(same["perplexity_trained"])
    logits = lm_head(hidden[0, :5])
    expected = torch.nn.functional.cross_entropy(logits, batch["input_ids"][0, 1:]).exp().item()
    assert same["perplexity_original"] == pytest.approx(expected, rel=1e-6)
    moved = drift_summary(drift_counts(other, hidden, batch, lm_head, lm_head))
    flipped = int(lm_head(other[0, 2]).argmax() != lm_head(hidden[0, 2]).argmax())
    assert moved["agreement"] == pytest.approx(1 - flipped / 5)


def test_schedules_of_joint_training():
    assert [ramp(s, 4, "linear") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert ramp(0, 4, "constant") == 1.0 and ramp(7, 0, "sine") == 1.0
    assert ramp(1, 4, "sine") == pytest.approx(2 ** -0.5)
    heads, backbone = joint_lr_lambdas(warmup=2, total=10, kind="constant", min_ratio=0.1, heads_only_steps=4)
    assert [heads(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert [backbone(s) for s in range(7)] == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"train.backbone.lora.load_in_bits": 4}, "needs a CUDA GPU|needs bitsandbytes"),
        ({"train.backbone.teacher": "cache"}, "teacher: cache needs data.feature_cache.path"),
        ({"train.backbone.lora.target_modules": "[lm_head]"}, "the lm_head and the embedding cannot take an adapter"),
        ({"train.backbone.lora.target_modules": "[no_such_layer]"}, "train.backbone.lora.target_modules"),
    ],
)
def test_bad_joint_settings_are_refused_clearly(varied_base, tmp_path, extra, message):
    if "load_in_bits" in str(extra) and torch.cuda.is_available():
        pytest.skip("a GPU is here: 4-bit loading may run")
    with pytest.raises(ConfigError, match=message):
        train(load_recipe(None, joint(varied_base, tmp_path / "bad", **extra)), progress=False)
    assert not (tmp_path / "bad" / "heads").exists()


def test_a_heads_only_stage_as_long_as_the_run_is_refused(varied_base, tmp_path):
    with pytest.raises(ConfigError, match="heads_only_steps .* leaves no joint steps"):
        load_recipe(None, joint(varied_base, tmp_path / "x", **{"train.backbone.heads_only_steps": 6}))
