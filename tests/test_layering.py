"""Imports run downward only: utils → kernels → models → decoding → data → train → eval → scripts.

Every import of the package (module level or inside a function) is read from the source; an import
of a higher layer fails the test, naming the file, the line and both layers."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

LAYERS = ("utils", "kernels", "models", "decoding", "data", "train", "eval", "scripts")


def layer_folder(layer: str) -> Path:
    """Where the installed package's layer lives (the package maps each folder of the repository)."""
    return Path(list(importlib.util.find_spec(f"draftheads.{layer}").submodule_search_locations)[0])


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "draftheads" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def upward_imports(folder=layer_folder) -> list[str]:
    problems = []
    for layer in LAYERS:
        files = sorted(folder(layer).rglob("*.py"))
        for path in files:
            for line, module in imports(path):
                target = layer_of(module)
                if target is not None and target > LAYERS.index(layer):
                    problems.append(
                        f"{layer}/{path.relative_to(folder(layer))}:{line} imports {module} ({LAYERS[target]} is above {layer})"
                    )
    return problems


def test_every_import_runs_down_the_layers():
    assert all(len(list(layer_folder(layer).glob("*.py"))) > 1 for layer in LAYERS)  # the real files are read
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "models" / "x.py").write_text("def f():\n    from draftheads.train.loop import train\n")
    (tmp_path / "eval" / "y.py").write_text("from draftheads.train.loop import train\n")  # downward: fine
    assert upward_imports(lambda layer: tmp_path / layer) == ["models/x.py:2 imports draftheads.train.loop (train is above models)"]
