"""End to end on the offline demo model: the README's main job, as a user runs it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_main_job_trains_heads_that_beat_untrained_ones(tmp_path):
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
