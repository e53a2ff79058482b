"""End to end on the offline demo model: the README's main job, as a user runs it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_main_job_on_demo_model_and_data():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- main-job -->\n```bash\n(.*?)\n```", readme, re.S).group(1)
    job = command.split("&&")[-1].strip()  # the install part is what .ci/run already did
    done = subprocess.run(job, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "base model: demo:smollm2-135m = HuggingFaceTB/SmolLM2-135M-Instruct" in out
    assert "<|im_start|>assistant\n⟦" in out  # the assistant reply is marked as trained on
    assert re.search(r"demo:sharegpt: \d+ records read, 2000 kept", out)
    assert re.search(r"tokens: \d+ \(\d+ trained on, \d+\.\d%\)", out)

