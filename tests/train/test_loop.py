"""The training loop on a tiny base model: learning, resuming, multi-process agreement, export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from draftheads.decoding.planning.stats import RankStats
from draftheads.models.draft_model import DraftModel
from draftheads.train.config import load_recipe
from draftheads.train.loop import train
from helpers import assert_named
from draftheads.utils.errors import ConfigError, ModelLoadError

from helpers import launch, overrides


def heads_of(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "heads" / "model.safetensors"))


def test_loss_goes_down_and_heads_beat_their_untrained_selves(tiny_base, tmp_path, monkeypatch):
    # A random tiny base: its frozen lm_head limits what shared heads can learn, so these heads
    # train their own projections (the other configuration the demo recipe does not use).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    settings = {"train.max_steps": 30, "train.eval_every": 15, "train.trackers": "[tensorboard, wandb]", "heads.share_lm_head": "false"}
    result = train(load_recipe(None, overrides(tiny_base, out, **settings)), progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.9 * first, result.losses
    assert result.evals[-1]["loss"][0] < result.evals[0]["loss"][0]
    assert [e["step"] for e in result.evals] == [0, 15, 30]
    tokens = [e["target_tokens"] for e in result.evals]  # a learning curve's x-axis
    assert tokens[0] == 0 < tokens[1] < tokens[2] and result.evals[2]["train_seconds"] > result.evals[1]["train_seconds"] > 0
    assert sorted(p.name for p in (out / "heads").iterdir()) == [
        "README.md", "calibration.json", "config.json", "model.safetensors", "recipe.yaml", "training.json"
    ]
    assert_named(out / "heads")
    assert "Held-out accuracy per head" in (out / "heads" / "README.md").read_text()
    assert list((out / "logs").rglob("events.out.tfevents*")), "tensorboard wrote nothing"
    assert list(tmp_path.rglob("offline-run-*")), "wandb (offline) wrote nothing"
    assert (out / "recipe.yaml").is_file()


def test_crash_and_resume_reproduce_the_uninterrupted_run(tiny_base, tmp_path):
    straight = tmp_path / "straight"
    train(load_recipe(None, overrides(tiny_base, straight, **{"train.save_every": 3})), progress=False)

    resumed = tmp_path / "resumed"
    recipe = load_recipe(None, overrides(tiny_base, resumed, **{"train.save_every": 3, "train.resume_from": "latest"}))

    def crash(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt  # after the step-3 checkpoint, before step 6's
    with pytest.raises(KeyboardInterrupt):
        train(recipe, on_step=crash, progress=False)
    assert not (resumed / "heads").exists()
    assert [p.name for p in sorted((resumed / "checkpoints").iterdir())] == ["step-00000003"]
    train(recipe, progress=False)
    a, b = heads_of(straight), heads_of(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = [json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) for run in (straight, resumed)]
    assert last[0]["target_tokens"] == last[1]["target_tokens"] > 0  # the count survives the resume


def test_loading_on_a_different_base_is_refused(tiny_base, tmp_path, demo_tokenizer):
    out = tmp_path / "run"
    train(load_recipe(None, overrides(tiny_base, out, **{"train.max_steps": 1})), progress=False)
    draft = DraftModel.from_pretrained(out / "heads")  # base from the config
    assert draft.backbone.location.spec == str(tiny_base)

    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    wider = tmp_path / "wider"
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), hidden=32)).save_pretrained(wider)
    demo_tokenizer.save_pretrained(wider)
    with pytest.raises(ModelLoadError, match=r"do not fit base model .*hidden_size 64 \(heads\) vs 32 \(base\)"):
        DraftModel.from_pretrained(out / "heads", base=str(wider))

    other_template = tmp_path / "other-template"
    LlamaForCausalLM.from_pretrained(tiny_base).save_pretrained(other_template)
    demo_tokenizer.save_pretrained(other_template)
    (other_template / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(ModelLoadError, match="tokenizer_fingerprint .*; the tokenizers differ in their chat template$"):
        DraftModel.from_pretrained(out / "heads", base=str(other_template))

    # a tokenizer whose eos_token differs: the refusal names the token
    from transformers import AutoTokenizer

    other_eos = tmp_path / "other-eos"
    LlamaForCausalLM.from_pretrained(tiny_base).save_pretrained(other_eos)
    AutoTokenizer.from_pretrained(tiny_base, eos_token="<|im_start|>").save_pretrained(other_eos)
    with pytest.raises(
        ModelLoadError, match=r"the tokenizers differ in special eos_token '<\|im_end\|>' \(heads\) vs '<\|im_start\|>' \(base\)$"
    ):
        DraftModel.from_pretrained(out / "heads", base=str(other_eos))


# Two processes take about 25 s a run: with every other multi-process test they are in the slow set, which CI runs too.
@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu-2proc", "deepspeed-zero2", "deepspeed-zero3"])
def test_two_processes_agree_with_one(config, tiny_base, tmp_path):
    """2 processes x batch 2 computes the same updates as 1 process x batch 2 x 2 accumulation steps."""
    steps = {"train.max_steps": 4, "train.seed": 7}
    one = tmp_path / "one"
    launch("cpu", tiny_base, one, **steps, **{"train.grad_accum": 2})
    two = tmp_path / "two"
    launch(config, tiny_base, two, **steps)
    a, b = heads_of(one), heads_of(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert any(a[k].abs().sum() > 0 for k in a)  # the heads did move from their zero init
    # every held-out answer's walk, gathered from both processes (the answers' data, not their ranks, which ties may move)
    calibrations = [RankStats.from_json(json.loads((run / "heads" / "calibration.json").read_text())) for run in (one, two)]
    walks = [{(w.turn, w.length, tuple(w.copies)) for w in c.walks} for c in calibrations]
    assert walks[0] and walks[0] == walks[1]


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory, demo_tokenizer):
    """A 2-layer Llama of hidden size 384: its attention and MLP matrices exceed DeepSpeed's
    persistence threshold (100k elements), so ZeRO-3 shards them."""
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    folder = tmp_path_factory.mktemp("wide-base")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), hidden=384)).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


def run_probe(config: str | None, out, settings: list[str]) -> None:
    """bench/sharded_probe.py in this process's interpreter, under `accelerate launch` with a
    shipped config when one is named (CPU processes over gloo)."""
    import os
    from pathlib import Path

    from draftheads.scripts.launch import uses_deepspeed
    from draftheads.utils.paths import accelerate_config_path

    probe = [str(Path(__file__).parents[2] / "bench" / "sharded_probe.py"), "--steps", "1", str(out), "-", *settings]
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_path(config))] if config else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if config and not uses_deepspeed(accelerate_config_path(config)):
        env["ACCELERATE_USE_CPU"] = "true"
    done = subprocess.run([sys.executable, *launcher, *probe], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow  # three launches of two processes, about 25 s each
@pytest.mark.parametrize(
    "heads",
    [{"heads.head_type": "medusa"}, {"heads.head_type": "eagle", "heads.fuse_layers": "[0, 1]", "heads.draft_vocab_size": 500}],
    ids=["medusa1", "eagle3"],
)
def test_zero3_shards_the_frozen_target_and_matches_one_process(heads, wide_base, tmp_path):
    """Online training with the frozen target's layers sharded by ZeRO-3 over 2 processes: each
    process holds half of the layers' matrices (all but 11% of their parameters: DeepSpeed keeps
    norms and matrices under 100k elements whole), yet the features of a fixed batch are the single
    process's exactly, and the first step's loss is equal to float rounding (the 2 processes sum
    their halves of the step in another order)."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run_probe(None, one, overrides(wide_base, tmp_path / "one", **{"train.seed": 7, "train.grad_accum": 2, **heads}))
    run_probe("deepspeed-zero3", two, overrides(wide_base, tmp_path / "two", **{"train.seed": 7, **heads}))
    a, b = torch.load(one), torch.load(two)
    assert not a["sharded"] and b["sharded"]
    assert a["shares"] == [{"total": a["shares"][0]["total"], "sharded": 0, "held": 0}]
    for share in b["shares"]:
        assert share["total"] == a["shares"][0]["total"] and share["sharded"] >= 0.85 * share["total"]
        assert share["held"] <= share["sharded"] // 2 + 16  # half of each matrix (a partition is padded by at most one element)
    assert a["features"].keys() == b["features"].keys()
    for layer in a["features"]:
        assert torch.equal(a["features"][layer], b["features"][layer]), layer
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    # after the step the heads agree too; EAGLE-3's layer started from the target's last one, which ZeRO-3 had partitioned
    assert a["heads"].keys() == b["heads"].keys() and len(a["heads"]) > 0
    for name in a["heads"]:
        torch.testing.assert_close(b["heads"][name], a["heads"][name], rtol=1e-5, atol=1e-6, msg=name)
    layer = a["shares"][0]["total"] // 2  # the 2 layers are alike: DeepSpeed gathers one and prefetches the next, no further
    assert a["gathering"] is None and b["gathering"] == {
        "prefetch_bucket_size": layer,
        "max_live_parameters": 2 * layer,
        "max_reuse_distance": 0,
    }


@pytest.mark.slow  # three launches of two processes, about 20 s each
def test_a_zero3_run_resumed_from_its_checkpoint_equals_the_straight_run(wide_base, tmp_path):
    """Checkpoints under ZeRO-3 leave the sharded frozen layers out (wide_base: its layers' matrices are
    partitioned) and still resume exactly."""
    # a constant rate: the first launch of the resumed run stops at step 2 without changing its schedule
    settings = {"train.max_steps": 4, "train.save_every": 2, "train.seed": 7, "train.schedule": "constant", "train.warmup_steps": 0}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch("deepspeed-zero3", wide_base, straight, **settings)
    launch("deepspeed-zero3", wide_base, resumed, **{**settings, "train.max_steps": 2})
    launch("deepspeed-zero3", wide_base, resumed, **{**settings, "train.resume_from": "latest"})
    a, b = heads_of(straight), heads_of(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the third launch went on from step 2 (a silent restart would log step 0 again)
    logged = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    straight_end = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])
    assert [m["step"] for m in logged] == [0, 2, 4] and logged[-1]["target_tokens"] == straight_end["target_tokens"]


# three training processes, 14-29 s (a new virtualenv's first imports compile); test_crash_and_resume stays in the default run
@pytest.mark.slow
def test_kill_9_and_resume_reproduce_the_uninterrupted_run(tiny_base, tmp_path):
    import signal
    import time

    settings = {"train.max_steps": 60, "train.save_every": 5, "train.resume_from": "latest", "train.batch_size": 1}
    straight = tmp_path / "straight"
    train(load_recipe(None, overrides(tiny_base, straight, **settings)), progress=False)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "draftheads.scripts.cli", "train", *overrides(tiny_base, killed, **settings)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000005").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "heads").exists(), "the run finished before it could be killed"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = heads_of(straight), heads_of(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fresh_run_into_a_used_output_dir_is_refused(tiny_base, tmp_path):
    from draftheads.utils.errors import ConfigError

    out = tmp_path / "run"
    train(load_recipe(None, overrides(tiny_base, out, **{"train.max_steps": 2})), progress=False)
    with pytest.raises(ConfigError, match="already holds checkpoints of another run: set train.resume_from=latest"):
        train(load_recipe(None, overrides(tiny_base, out, **{"train.max_steps": 4})), progress=False)
    result = train(load_recipe(None, overrides(tiny_base, out, **{"train.max_steps": 2, "train.resume_from": "latest"})), progress=False)
    assert result.evals and result.evals[-1]["step"] == 2  # already done: still reports where the heads stand


def test_clover_trains_through_the_same_loop_with_feature_regression_and_reloads(varied_base, tmp_path):
    out = tmp_path / "clover"
    extra = {"heads.head_type": "clover", "train.max_steps": 30, "train.loss.feature_weight": 0.5, "train.lr": 0.01, "data.packing": "true"}
    result = train(load_recipe(None, overrides(varied_base, out, **extra)), progress=False)
    assert sum(result.losses[-4:]) < 0.9 * sum(result.losses[:4]), result.losses
    draft = DraftModel.from_pretrained(out / "heads")
    assert draft.heads.config.head_type == "clover" and draft.heads.config.num_heads == 2
    exported = heads_of(out)
    assert any(name.startswith("block.") for name in exported) and not any("embed" in name for name in exported)


@pytest.mark.parametrize(
    "heads,extra",
    [
        ({"heads.head_type": "hydra"}, {}),
        ({"heads.head_type": "hydra", "heads.prefix_attention": "true", "heads.head_layers": 2}, {"train.loss.soft_label_weight": 1.0}),
        ({"heads.head_type": "eagle", "heads.feature_noise": 0.05}, {"train.loss.feature_weight": 1.0}),
        (
            {"heads.head_type": "eagle", "heads.fuse_layers": "[0, 1]", "heads.training_time_test": "true"},
            {"train.loss.soft_label_weight": 1.0},
        ),
    ],
    ids=["hydra", "hydra++", "eagle1", "eagle3"],
)
def test_sequential_families_learn_through_the_same_loop_and_reload(heads, extra, varied_base, tmp_path):
    out = tmp_path / "run"
    values = {**heads, **extra, "train.max_steps": 30, "train.lr": 0.01, "data.packing": "true"}
    result = train(load_recipe(None, overrides(varied_base, out, **values)), progress=False)
    assert sum(result.losses[-4:]) < 0.9 * sum(result.losses[:4]), result.losses
    trained = result.history[-1]["top1"]
    assert len(trained) == (1 if heads == {"heads.head_type": "eagle", "heads.feature_noise": 0.05} else 2)  # EAGLE-1 trains depth 1
    assert result.history[-1]["loss"][0] < result.history[0]["loss"][0] - 0.3, (result.history[0], result.history[-1])  # held-out CE
    draft = DraftModel.from_pretrained(out / "heads")
    assert draft.heads.config.head_type == heads["heads.head_type"] and draft.heads.config.num_heads == 2
    assert not any("embed_tokens" in name or name.startswith("lm_head") for name in heads_of(out))  # backbone weights stay out


def test_a_draft_vocabulary_beyond_the_base_is_refused_before_anything_is_written(tiny_base, tmp_path):
    extra = {"heads.head_type": "eagle", "heads.draft_vocab_size": 60000}
    with pytest.raises(ConfigError, match=r"heads.draft_vocab_size: 60000 exceeds the vocabulary of .* \(49152 tokens\)"):
        train(load_recipe(None, overrides(tiny_base, tmp_path / "run", **extra)), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_reduced_draft_vocabulary_learns_reloads_and_drafts_only_its_tokens(varied_base, tmp_path):
    from draftheads.decoding.engine import Engine, GenerationConfig
    from draftheads.decoding.tree import TreeSpec

    out = tmp_path / "run"
    values = {"heads.head_type": "hydra", "heads.draft_vocab_size": 500, "train.max_steps": 30, "train.lr": 0.01, "data.packing": "true"}
    result = train(load_recipe(None, overrides(varied_base, out, **values)), progress=False)
    assert sum(result.losses[-4:]) < 0.9 * sum(result.losses[:4]), result.losses
    first, last = result.history[0], result.history[-1]
    assert last["loss"][0] < first["loss"][0] - 0.3 and 0.5 < last["coverage"][0] < 1.0
    assert set(last["expected_tau"]) == {"2x1", "4x2", "8x4", "16x8"}
    draft = DraftModel.from_pretrained(out / "heads")
    vocabulary = set(draft.heads.draft_to_token.tolist())
    assert len(vocabulary) == 500 and torch.equal(draft.heads.draft_to_token, result_map(out))
    calibration = json.loads((out / "heads" / "calibration.json").read_text())
    assert calibration["positions"] > 0 and "held-out" in calibration["source"]
    assert calibration["cells"] and calibration["offset_bucket"] == 32  # positions located by turn and answer offset
    # the held-out answers kept as walks: `--tree auto` weighs the lookup branch on these heads as they are
    walks = RankStats.from_json(calibration).walks
    assert calibration["lookup_ngram"] == 2 and walks and sum(w.length for w in walks) >= calibration["positions"]
    engine = Engine(draft.backbone, draft.heads, TreeSpec("dynamic", budget=6, width=3))
    ids = draft.backbone.tokenizer("The weather today is", return_tensors="pt").input_ids[0]
    drafted = []
    original = engine.drafter.draft
    engine.drafter.draft = lambda *a, **k: drafted.append(original(*a, **k)) or drafted[-1]
    reference = Engine(draft.backbone).generate(ids, GenerationConfig(max_new_tokens=20)).tokens
    assert engine.generate(ids, GenerationConfig(max_new_tokens=20)).tokens == reference
    assert drafted and all(set(d.tokens[1:].tolist()) <= vocabulary for d in drafted)


def result_map(out):
    from safetensors.torch import load_file

    return load_file(str(out / "heads" / "model.safetensors"))["draft_to_token"]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (["train.backbone.mode=lora", "train.backbone.merge_adapter=true"], "train.backbone.merge_adapter"),
        (["train.backbone.mode=full", "train.backbone.objective=kl", "train.backbone.teacher=model"], "train.backbone.teacher"),
        (["train.backbone.mode=lora", "train.backbone.merge_adapter=false", "heads.draft_vocab_size=500"], "heads.draft_vocab_size"),
    ],
)
def test_what_zero3_cannot_do_with_a_trained_backbone_is_refused_by_its_key(settings, key):
    from draftheads.train.loop import _refuse_under_zero3

    recipe = load_recipe(None, ["heads.head_type=medusa", *settings])
    with pytest.raises(ConfigError, match=f"^{key}: .*deepspeed-zero2"):
        _refuse_under_zero3(recipe.train.backbone, recipe.heads)
    frozen = load_recipe(None, ["heads.head_type=medusa", "heads.draft_vocab_size=500"])  # a frozen backbone's lm_head stays whole: allowed
    _refuse_under_zero3(frozen.train.backbone, frozen.heads)
