"""The wheel is what users install: check its layout, not the source tree's."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_is_one_namespace_with_recipes_inside(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("draftheads-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"draftheads", wheel.name.split("-py")[0] + ".dist-info"}, top
    assert "draftheads/recipes/smollm2-135m/data.yaml" in names
    assert "draftheads/models/backbone.py" in names and "draftheads/data/chat.py" in names
    assert "draftheads/__init__.py" not in names  # a namespace: each folder is a subpackage
    assert not any(n.startswith(("draftheads/tests", "draftheads/bench")) for n in names)
    entry = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt").decode()
    assert "draftheads = draftheads.scripts.cli:main" in entry
