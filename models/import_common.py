"""What every checkpoint importer shares: reading the source folder's config and weights, and
writing our heads folder (config, weights, training.json with the provenance, model card).

Importers translate weight names and shapes only; the heads are then built by their family's own
`build` for the base model and loaded strictly, so an imported folder is indistinguishable from a
trained one (`DraftModel.from_pretrained`, `draftheads eval`, `draftheads push`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from draftheads.models.backbone import Backbone
from draftheads.models.card import model_card
from draftheads.models.draft_model import DraftModel, resolve_folder, save_heads
from draftheads.models.heads.base import HeadConfig
from draftheads.utils.errors import ModelLoadError
from draftheads.models.heads_folder import CARD_NAME, TRAINING_NAME


def source_folder(spec: str) -> Path:
    """A local folder, or a Hub repository downloaded to the cache."""
    return resolve_folder(spec, "checkpoint")


def read_source_config(folder: Path) -> dict:
    """The checkpoint's config.json as a dict; the error names the file."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no config.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def config_value(config: dict, key: str, path: Path, kind: type = int):
    """`config[key]`, refusing a missing key or a value of the wrong type with the file named."""
    if key not in config:
        raise ModelLoadError(f"{path}: required key '{key}' is missing")
    value = config[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelLoadError(f"{path}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def read_source_weights(folder: Path, names: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], Path]:
    """The first of `names` present in `folder`, loaded on CPU (safetensors, or a torch pickle read
    with `weights_only`: no code from the file runs)."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        try:
            state = load_file(str(path)) if name.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign file: every reader's error means "cannot read these weights"
            raise ModelLoadError(f"{path}: cannot read the weights ({exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelLoadError(f"{path}: expected a flat dictionary of tensors")
        return state, path
    raise ModelLoadError(f"{folder}: no weights file (looked for {', '.join(names)})")


def write_imported(
    backbone: Backbone, config: HeadConfig, state: dict[str, torch.Tensor], out: str | Path, provenance: dict
) -> DraftModel:
    """Build `config`'s heads for `backbone`, load `state` strictly (names and shapes), and write the
    heads folder with `provenance` (source, format) in training.json and the model card."""
    draft = DraftModel.new(backbone, config)
    expected = draft.heads.state_dict()
    source = provenance["source"]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"{source}: converted weights do not match the heads: missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelLoadError(f"{source}: {name} has shape {tuple(tensor.shape)}, the base model needs {tuple(expected[name].shape)}")
    draft.heads.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    training = {"imported_from": provenance}
    files = {TRAINING_NAME: json.dumps(training, indent=2) + "\n", CARD_NAME: model_card(draft.heads.config, training)}
    save_heads(draft.heads, out, extra_files=files)
    draft.heads.eval()
    return draft
