from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.medusa import MedusaConfig
from hub_server import RecordingHub

TOKEN = "hf_testsecret1234567890"


@pytest.fixture
def heads_folder(tiny_llama, demo_tokenizer, tmp_path):
    draft = DraftModel.new(
        Backbone(tiny_llama, demo_tokenizer, ModelLocation("org/base", "org/base", "rev1", "hub", "org/base")), MedusaConfig(num_heads=2)
    )
    training = {"steps": 80, "data": ["demo:sharegpt"], "train_rows": 900, "held_out_rows": 50,
                "final_eval": {"top1": [0.31, 0.12], "top5": [0.55, 0.3]}, "first_eval": {"top1": [0.02, 0.02], "top5": [0.1, 0.08]}}
    folder = draft.save_pretrained(tmp_path / "heads", {"training.json": json.dumps(training)})
    (tmp_path / "heads" / "notes.txt").write_text("not published")
    return folder


def test_push_uploads_heads_and_card_without_leaking_the_token(heads_folder, tmp_path):
    with RecordingHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1", "HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "draftheads.scripts.cli", "push", str(heads_folder), "me/smol-medusa", "--private"],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.repos == [{"name": "smol-medusa", "organization": "me", "visibility": "private", "type": "model"}]
    assert sorted(hub.files) == ["README.md", "config.json", "model.safetensors", "training.json"]
    assert hub.files["model.safetensors"] == (heads_folder / "model.safetensors").read_bytes()
    card = hub.files["README.md"].decode()
    assert "base_model: org/base" in card and "| revision | `rev1` |" in card and "| 1 | 0.310 | 0.550 | 0.020 |" in card
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert TOKEN not in done.stdout + done.stderr
    assert not any(TOKEN.encode() in p.read_bytes() for p in heads_folder.iterdir())


def test_push_without_a_token_is_a_clear_error(heads_folder, tmp_path, monkeypatch, capsys):
    from draftheads.scripts.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["push", str(heads_folder), "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_push_reports_a_refusal(heads_folder, tmp_path):
    with RecordingHub() as hub:
        # huggingface_hub reads HF_ENDPOINT when imported, hence a fresh process.
        env = {**os.environ, "HF_ENDPOINT": hub.url + "/nothing-here", "HF_TOKEN": TOKEN, "HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "draftheads.scripts.cli", "push", str(heads_folder), "me/x"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert done.returncode == 2 and "error: the Hub refused the upload to me/x (HTTP 404)" in done.stderr
    assert "Traceback" not in done.stderr and TOKEN not in done.stderr


def test_push_of_jointly_trained_heads_uploads_the_adapter_and_says_the_backbone_changed(heads_folder, tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(heads_folder / "adapter"))
    training = json.loads((heads_folder / "training.json").read_text())
    training["backbone"] = {
        "mode": "lora", "objective": "kl", "trainable_parameters": 512, "total_parameters": 100000, "rank": 2, "merged": False,
        "drift": {"positions": 900, "agreement": 0.9912, "perplexity_original": 3.5, "perplexity_trained": 3.6},
    }
    (heads_folder / "training.json").write_text(json.dumps(training))
    with RecordingHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "draftheads.scripts.cli", "push", str(heads_folder), "me/m2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(hub.files)
    assert hub.files["adapter/adapter_model.safetensors"] == (heads_folder / "adapter" / "adapter_model.safetensors").read_bytes()
    card = hub.files["README.md"].decode()
    assert "## Backbone: changed by training" in card and "512 of 100,000 parameters trained" in card
    assert "| greedy agreement with the original (same argmax) | 99.12% |" in card
