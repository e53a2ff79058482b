"""A base model plus draft heads: build, save (heads only), load, with compatibility checks.

A saved heads folder is Hugging Face-native and holds only the heads: `config.json` (the head
config with `head_type` and the base model's identity), `model.safetensors`, and `README.md` (the
model card) plus `training.json` when written by the trainer. Loading checks that the base model
given or named in the config has the hidden size, vocabulary and tokenizer the heads were trained
with, and refuses a mismatch with a message that says which.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from draftheads.models.backbone import Backbone, BackboneConfig, load_backbone, tokenizer_fingerprint, tokenizer_parts
from draftheads.models.heads_folder import ADAPTER_DIR, BACKBONE_DIR, CONFIG_NAME, WEIGHTS_NAME
from draftheads.models.heads.base import BaseModelInfo, DraftHeads, HeadConfig
from draftheads.models.registry import HEADS
from draftheads.utils.atomic import atomic_directory
from draftheads.utils.errors import ConfigError, ModelLoadError



def base_info(backbone: Backbone) -> BaseModelInfo:
    """The identity of `backbone` that heads record and later check."""
    return BaseModelInfo(
        model=backbone.location.spec, revision=backbone.location.revision, hidden_size=backbone.hidden_size, vocab_size=backbone.vocab_size,
        tokenizer_fingerprint=tokenizer_fingerprint(backbone.tokenizer), hub_id=backbone.location.hub_id,
        tokenizer_parts=tokenizer_parts(backbone.tokenizer)
    )


def _part_difference(key: str, heads: dict[str, str], base: dict[str, str]) -> str:
    """One differing part of two tokenizers, as a refusal names it."""
    if key.startswith("special "):
        return f"{key} {heads.get(key)!r} (heads) vs {base.get(key)!r} (base)"
    return f"their {key.replace('_', ' ')}"


def check_compatible(info: BaseModelInfo, backbone: Backbone, heads_source: str) -> None:
    """Refuse a base model whose hidden size, vocabulary or tokenizer differs from the heads'."""
    actual = base_info(backbone)
    problems = [
        f"{name} {getattr(info, name)} (heads) vs {getattr(actual, name)} (base)"
        for name in ("hidden_size", "vocab_size", "tokenizer_fingerprint")
        if getattr(info, name) != getattr(actual, name)
    ]
    if info.tokenizer_fingerprint != actual.tokenizer_fingerprint and info.tokenizer_parts:
        heads, base = info.tokenizer_parts, actual.tokenizer_parts
        differing = [_part_difference(key, heads, base) for key in sorted(set(heads) | set(base)) if heads.get(key) != base.get(key)]
        problems.append("the tokenizers differ in " + ", ".join(differing))
    if problems:
        raise ModelLoadError(
            f"{heads_source}: these heads were trained on '{info.model}' and do not fit base model "
            f"'{backbone.location.spec}': " + "; ".join(problems)
        )


class DraftModel:
    """Backbone + heads, as used by evaluation and users. Training wraps the same pieces."""

    def __init__(self, backbone: Backbone, heads: DraftHeads, backbone_mode: str = "frozen", folder: Path | None = None):
        self.backbone = backbone
        self.heads = heads
        self.backbone_mode = backbone_mode
        """`frozen`: the base model as published; `lora` / `full`: trained with the heads (Medusa-2)."""
        self.folder = folder
        """The heads folder this was loaded from, if any."""

    @classmethod
    def new(cls, backbone: Backbone, config: HeadConfig) -> "DraftModel":
        """Fresh heads of `config`'s family for `backbone`, with the base's identity recorded
        (in a copy of `config`: the caller's recipe is left as it was)."""
        config = dataclasses.replace(config, base=base_info(backbone))
        return cls(backbone, HEADS.get(config.head_type).build(config, backbone))

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the heads folder atomically (see `save_heads`)."""
        return save_heads(self.heads, directory, extra_files)

    @classmethod
    def from_pretrained(
        cls, heads: str | Path, base: str | None = None, device: str | torch.device = "cpu", dtype: str = "float32"
    ) -> "DraftModel":
        """Load heads (a folder or a Hub id) and their base model (`base`, else the one in the config).

        Heads trained jointly with their backbone (Medusa-2) carry it: an `adapter/` (peft LoRA,
        applied to the base and merged) or a full `backbone/` folder (loaded instead of the base)."""
        folder = resolve_folder(str(heads), "heads")
        config = read_head_config(folder)
        mode = "full" if (folder / BACKBONE_DIR).is_dir() else "lora" if (folder / ADAPTER_DIR).is_dir() else "frozen"
        if mode == "full" and base:
            raise ModelLoadError(f"{heads}: these heads carry their own trained backbone ({BACKBONE_DIR}/); do not pass a base model")
        spec = str(folder / BACKBONE_DIR) if mode == "full" else base or config.base.model
        revision = config.base.revision if mode != "full" and not base else None
        backbone = load_backbone(BackboneConfig(base=spec, revision=revision, dtype=dtype), device)
        check_compatible(config.base, backbone, str(heads))
        if mode == "lora":
            backbone = Backbone(_merged_adapter(backbone.model, folder / ADAPTER_DIR).eval(), backbone.tokenizer, backbone.location)
        return cls.with_backbone(folder, backbone, mode, config)

    @classmethod
    def with_backbone(
        cls, folder: str | Path, backbone: Backbone, backbone_mode: str = "frozen", config: HeadConfig | None = None
    ) -> "DraftModel":
        """The heads of a local heads folder on an already loaded `backbone` (several heads can
        share one base), checked against it; a `config` given was read and checked by the caller."""
        folder = Path(folder)
        if config is None:
            config = read_head_config(folder)
            check_compatible(config.base, backbone, str(folder))
        module = HEADS.get(config.head_type).build(config, backbone)
        load_head_weights(module, folder)
        return cls(backbone, module.eval(), backbone_mode, folder)


def save_heads(
    heads: DraftHeads,
    directory: str | Path,
    extra_files: dict[str, str] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    write_more: Callable[[Path], object] | None = None,
) -> Path:
    """Write config.json, model.safetensors (heads only) and any extra text files, atomically:
    a reader (or a crash) never sees a mix of an old and a new export.

    `state` replaces `heads.state_dict()` (a gathered one, under ZeRO-3); `write_more(folder)` adds
    files inside the same atomic write (a trained backbone's adapter or weights)."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in (heads.state_dict() if state is None else state).items()}
    with atomic_directory(directory, replace=True) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(heads.config.to_json_dict(), indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "head_type": heads.config.head_type})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if write_more is not None:
            write_more(tmp)
    return directory


def read_head_config(folder: Path) -> HeadConfig:
    """Parse a heads folder's config.json into its family's config class."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no {CONFIG_NAME}, so this is not a draftheads heads folder")
    try:
        data = json.loads(path.read_text())
        config = HeadConfig.__from_config__(data, str(path))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    except ConfigError as exc:
        raise ModelLoadError(str(exc)) from None
    if config.base is None:
        raise ModelLoadError(f"{path}: no 'base' section: the heads do not say which base model they belong to")
    return config


def load_head_weights(module: DraftHeads, folder: Path) -> None:
    """Load model.safetensors into `module`, refusing an unreadable file, missing, unexpected or
    misshapen tensors, and a draft vocabulary map that does not fit the base vocabulary."""
    from safetensors import SafetensorError

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no {WEIGHTS_NAME}")
    device = next(iter(module.state_dict().values())).device
    try:
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    expected = module.state_dict()
    # a one-element parameter stored as a 0-dim scalar is reshaped to fit
    weights = {
        k: v.reshape(expected[k].shape) if k in expected and v.dim() == 0 and expected[k].numel() == 1 else v for k, v in weights.items()
    }
    misshapen = [
        f"{k} {tuple(v.shape)} (file) vs {tuple(expected[k].shape)} (config)"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if misshapen:
        raise ModelLoadError(f"{path}: tensors do not fit {folder / CONFIG_NAME}: " + "; ".join(misshapen[:4]))
    result = module.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{path}: weights do not match the config: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    vocab = module.draft_to_token
    if vocab is not None and vocab.numel() and not (0 <= int(vocab.min()) and int(vocab.max()) < module.vocab_size):
        raise ModelLoadError(
            f"{path}: the draft vocabulary map holds token id {int(vocab.max())}, but the base vocabulary has {module.vocab_size} tokens"
        )


def _merged_adapter(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """A base model with a saved LoRA adapter merged into its weights (plain weights decode fastest)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{adapter_dir}: cannot apply this LoRA adapter to the base model: {exc}") from None


def resolve_folder(spec: str, what: str = "heads") -> Path:
    """A local folder, or a Hub repository id downloaded to the Hub cache; `what` names the
    expected content in errors."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelLoadError(f"{spec}: not a {what} folder or a Hub repository id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec))
    except Exception as exc:  # network, auth or missing repo: all mean "cannot get these files"
        raise ModelLoadError(f"{spec}: cannot download {what} from the Hub: {exc}") from None
