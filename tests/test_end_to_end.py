"""End to end on the offline demo model: the README's main job, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_main_job_trains_heads_that_beat_untrained_ones_and_decode_losslessly(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- main-job -->\n```bash\n(.*?)\n```", readme, re.S).group(1)
    job = command.split("&&")[-1].strip()  # the install part is what .ci/run already did
    done = subprocess.run(f"{job} train.output_dir={tmp_path}/run", shell=True, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"head 1: (\d\.\d+) -> (\d\.\d+)", done.stdout)
    assert found, done.stdout[-2000:]
    before, after = map(float, found.groups())
    assert after > before + 0.05, f"head-1 top-1 {before} -> {after}"
    assert (tmp_path / "run" / "heads" / "model.safetensors").is_file()
    # The trained heads through the decoder on real MT-bench prompts: lossless, and τ is measured.
    report_path = tmp_path / "report.json"
    evaluated = subprocess.run(
        ["draftheads", "eval", "--heads", str(tmp_path / "run" / "heads"), "--prompts", "mt-bench", "--limit", "1",
         "--max-new-tokens", "24", "--tree-budget", "4", "--out", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["greedy_mismatches"] == 0 and report["n_turns"] == 2
    assert report["tau"] >= 1 and report["steps"] > 0


@pytest.mark.slow
def test_gen_data_on_the_demo_model_answers_mt_bench_turn_by_turn(tmp_path):
    out = tmp_path / "distill"
    command = ["draftheads", "gen-data", "recipes/smollm2-135m/distill.yaml", "--data", "demo:mt-bench", "--limit", "3",
               "--out", str(out), "distill.max_new_tokens=24"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all([m["from"] for m in r["conversations"]] == ["human", "gpt", "human", "gpt"] for r in records)
    assert all(r["conversations"][1]["value"].strip() for r in records)  # the model really answered
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["settings"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and metadata["counts"]["answers"] == 6
