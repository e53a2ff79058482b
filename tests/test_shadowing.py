"""No folder or module of the checkout shadows an installed package.

`python -m pytest` and `python -c` from the checkout root put the root first on `sys.path`, and
pytest's `pythonpath` puts `tests/` there: a regular package there named like an installed
distribution (transformers imports Hugging Face's `kernels`) would be imported in its place. The
source folders are namespace portions (no `__init__.py`), which Python takes only when no regular
package or module of that name exists anywhere on the path."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = (ROOT, ROOT / "tests", ROOT / "bench")
"""The folders that reach the front of `sys.path` when Python or pytest runs from the root, or a
bench script runs (`python bench/x.py` puts bench/ first)."""


def importable_names(folder: Path) -> set[str]:
    """Top-level names a folder on `sys.path` offers: its sub-folders and its modules."""
    names = {p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()}
    return names | {p.stem for p in folder.glob("*.py")}


def shadowed(folders=SEARCHED) -> list[str]:
    """Each name offered by `folders` that an installed distribution also provides, and that imports
    from the checkout (checked in a fresh interpreter started in the root, as a user would)."""
    installed = importlib.metadata.packages_distributions()
    names = sorted({name for folder in folders for name in importable_names(folder)} & set(installed))
    probe = "import importlib.util, json, sys; print(json.dumps({n: importlib.util.find_spec(n).origin for n in sys.argv[1:]}))"
    path = [str(folder) for folder in folders[1:]]
    env = {"PYTHONPATH": ":".join(path)} if path else {}
    out = subprocess.run([sys.executable, "-c", probe, *names], cwd=folders[0], capture_output=True, text=True, check=True,
                         env={**_environ(), **env})
    origins = json.loads(out.stdout)
    return [f"{name} -> {origin}" for name, origin in origins.items() if origin and Path(origin).is_relative_to(folders[0])]


def _environ() -> dict:
    """This environment without PYTHONPATH: what a user's shell has."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_no_source_folder_is_a_regular_package():
    assert [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("*/__init__.py"))] == []
    assert [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("*/__init__.py"))] == []


def test_installed_packages_win_over_the_checkouts_names():
    installed = importlib.metadata.packages_distributions()
    assert "kernels" in installed  # the case that broke a fresh install: transformers needs it
    assert shadowed() == []


def test_the_check_sees_a_shadowing_package(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "yaml.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "safetensors.py").write_text("")  # a bench script: `python bench/x.py` puts bench/ first
    assert [line.split(" ->")[0] for line in shadowed((tmp_path, tmp_path / "tests", tmp_path / "bench"))] == [
        "kernels",
        "safetensors",
        "yaml",
    ]


def test_an_installed_kernels_package_imports_from_the_root():
    # What failed on a fresh machine: transformers' hub integration imports the `kernels` package.
    probe = "import kernels, transformers.integrations.hub_kernels as h; print(kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env=_environ())
    assert out.returncode == 0, out.stderr[-2000:]
    assert not Path(out.stdout.strip()).is_relative_to(ROOT)
