"""The hidden-state cache: run the frozen backbone once over a recipe's dataset, train from disk.

`draftheads cache-features RECIPE` builds the recipe's rows exactly as training would (same
sources, template, truncation, held-out split, packing), runs the backbone over them once and
stores, per row, the tokens, loss mask, position ids and the features the head family declares
(plus the final hidden state, which soft labels read), optionally with the backbone's top-k
next-token log-probabilities. Storage is safetensors shards of `rows_per_shard` rows, each row's
tokens laid end to end with an offsets table, and an `index.json`.

Each shard is written to a temporary name and renamed, and carries the cache's fingerprint in its
metadata, so an interrupted build resumes at the first missing shard. Training opens the cache
through `open_feature_cache`, which refuses one made for another base model, tokenizer, data
settings or layer set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from draftheads.data.collate import Collator
from draftheads.data.dataset import Row, build_datasets
from draftheads.data.sources import dropped_note
from draftheads.models.backbone import DTYPES, LAST, Backbone, load_backbone
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.errors import ConfigError

INDEX = "index.json"
VERSION = 1
SPLITS = ("train", "held_out")


@dataclass
class CacheIdentity:
    """What a cache was made from; all of it must match the recipe that trains from it."""

    base_model: str
    hidden_size: int
    vocab_size: int
    tokenizer_fingerprint: str
    data_fingerprint: str
    """Hash of the data settings that decide the rows (sources, template, lengths, split, packing)."""
    layers: list[int]
    dtype: str
    teacher_topk: int

    def fingerprint(self) -> str:
        """Short hash of the whole identity (written into every shard)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(data_cfg) -> str:
    """Hash of the data settings that decide which rows exist, in which order."""
    from draftheads.utils.typed_config import to_dict

    settings = to_dict(data_cfg)
    settings.pop("feature_cache", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def training_layers(head_config) -> list[int]:
    """The layers training reads (and a cache stores) for a head family: those it declares, and
    the final normed state (what soft labels and held-out metrics project)."""
    return sorted(set(head_config.feature_layers()) | {LAST})


def identity_for(recipe, backbone: Backbone) -> CacheIdentity:
    """The identity a cache for `recipe` on `backbone` has."""
    from draftheads.models.draft_model import base_info
    from draftheads.models.registry import HEADS

    HEADS.required(recipe.heads, "the hidden-state cache (it stores the layers the family reads)")
    info = base_info(backbone)
    cfg = recipe.data.feature_cache
    return CacheIdentity(
        base_model=recipe.model.base, hidden_size=info.hidden_size, vocab_size=info.vocab_size,
        tokenizer_fingerprint=info.tokenizer_fingerprint, data_fingerprint=data_fingerprint(recipe.data),
        layers=training_layers(recipe.heads), dtype=cfg.dtype, teacher_topk=cfg.teacher_topk,
    )


def bytes_per_token(identity: CacheIdentity) -> int:
    """Disk bytes per cached token: features, ids, mask, positions, teacher top-k."""
    feature = len(identity.layers) * identity.hidden_size * torch.finfo(DTYPES[identity.dtype]).bits // 8
    return feature + 4 + 1 + 4 + identity.teacher_topk * (4 + 4)


def _shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def _shard_done(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint") == fingerprint
    except Exception:  # a file that is not a complete safetensors shard is redone
        return False


def build_feature_cache(
    recipe, progress: bool = True, device: str | torch.device | None = None, batch_rows: int = 8,
    on_shard: Callable[[str], None] | None = None, log: Callable[[str], None] = print,
) -> Path:
    """Build (or finish building) the cache at `recipe.data.feature_cache.path`; return its folder."""
    cfg = recipe.data.feature_cache
    if not cfg.path:
        raise ConfigError("data.feature_cache.path: set the folder the cache is written to (and read from by training)")
    out = Path(cfg.path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(recipe.model, device=device)
    backbone.model.requires_grad_(False)
    train_set, held_set, stats, _ = build_datasets(recipe.data, backbone.tokenizer, recipe.model.base, progress)
    identity = identity_for(recipe, backbone)
    fingerprint = identity.fingerprint()
    splits = {"train": train_set.rows, "held_out": held_set.rows}
    tokens = sum(len(r.input_ids) for rows in splits.values() for r in rows)
    needed = tokens * bytes_per_token(identity)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    log(f"feature cache: {tokens:,} tokens x ({len(identity.layers)} layer(s) x {identity.hidden_size} x {identity.dtype}"
        f"{f' + top-{identity.teacher_topk} teacher' if identity.teacher_topk else ''}) = {needed / 1e9:.2f} GB "
        f"in {out} ({free / 1e9:.1f} GB free)")
    if needed > free:
        raise ConfigError(f"data.feature_cache.path: {out} has {free / 1e9:.1f} GB free, the cache needs {needed / 1e9:.2f} GB")
    old_index = out / INDEX
    if old_index.exists() and json.loads(old_index.read_text()).get("fingerprint") != fingerprint:
        raise ConfigError(f"{out} holds a feature cache of other settings; choose another data.feature_cache.path or delete it")

    collate = Collator(pad_token_id=backbone.tokenizer.pad_token_id or 0)
    index = {"version": VERSION, "fingerprint": fingerprint, "identity": asdict(identity), "splits": {}, "stats": stats.lines(),
             "dropped": stats.dropped()}
    bar = tqdm(total=sum(len(rows) for rows in splits.values()), desc="caching features", unit="row", disable=not progress)
    for split, rows in splits.items():
        shards = []
        for number, start in enumerate(range(0, len(rows), cfg.rows_per_shard)):
            part = rows[start : start + cfg.rows_per_shard]
            name = _shard_name(split, number)
            shards.append({"file": name, "rows": len(part), "tokens": sum(len(r.input_ids) for r in part)})
            if _shard_done(out / name, fingerprint):
                bar.update(len(part))
                continue
            tensors = _shard_tensors(backbone, part, identity, collate, batch_rows, bar)
            tmp = out / f".{name}.tmp"
            save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint})
            os.replace(tmp, out / name)
            if on_shard is not None:
                on_shard(name)
        index["splits"][split] = {"rows": len(rows), "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    bar.close()
    atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")
    note = dropped_note(index["dropped"])
    if note:
        log(f"warning: {note}")
    return out


@torch.no_grad()
def _shard_tensors(backbone: Backbone, rows: list[Row], identity: CacheIdentity, collate: Collator, batch_rows: int, bar) -> dict:
    dtype = DTYPES[identity.dtype]
    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in identity.layers}
    top_ids, top_logprobs = [], []
    for start in range(0, len(rows), batch_rows):
        part = rows[start : start + batch_rows]
        batch = {k: v.to(backbone.lm_head.weight.device) for k, v in collate(part).items()}
        out = backbone.features(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"), identity.layers)
        for i, row in enumerate(part):
            n = len(row.input_ids)
            for layer in identity.layers:
                features[layer].append(out.features[layer][i, :n].to("cpu", dtype))
            if identity.teacher_topk:
                logprobs = torch.log_softmax(backbone.lm_head(out.features[LAST][i, :n]).float(), dim=-1)
                top = logprobs.topk(min(identity.teacher_topk, logprobs.shape[-1]), dim=-1)
                top_ids.append(top.indices.to("cpu", torch.int32))
                top_logprobs.append(top.values.cpu())
        bar.update(len(part))
    lengths = torch.tensor([0] + [len(r.input_ids) for r in rows])
    tensors = {
        "offsets": lengths.cumsum(0),
        "input_ids": torch.tensor([t for r in rows for t in r.input_ids], dtype=torch.int32),
        "loss_mask": torch.tensor([m for r in rows for m in r.loss_mask], dtype=torch.uint8),
    }
    if rows and rows[0].position_ids is not None:
        tensors["position_ids"] = torch.tensor([p for r in rows for p in r.position_ids], dtype=torch.int32)
    for layer, parts in features.items():
        tensors[f"features.{layer}"] = torch.cat(parts).contiguous()
    if identity.teacher_topk:
        tensors["teacher_ids"] = torch.cat(top_ids).contiguous()
        tensors["teacher_logprobs"] = torch.cat(top_logprobs).contiguous()
    return tensors


@dataclass
class CachedRow(Row):
    """A training row with its backbone features (and teacher top-k) read from the cache."""

    features: dict[int, torch.Tensor] | None = None
    teacher_ids: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None


class CachedDataset(torch.utils.data.Dataset):
    """The rows of one split, read lazily from the shards (memory-mapped safetensors slices)."""

    def __init__(self, folder: Path, split: dict, layers: list[int]):
        self.folder, self.layers = folder, layers
        self.shards = split["shards"]
        self.starts = []
        total = 0
        for shard in self.shards:
            self.starts.append(total)
            total += shard["rows"]
        self.length = total
        self._open: dict[int, object] = {}
        self._offsets: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.length

    def _shard(self, number: int):
        if number not in self._open:
            handle = safe_open(str(self.folder / self.shards[number]["file"]), framework="pt")
            self._open[number] = handle
            self._offsets[number] = handle.get_tensor("offsets").tolist()
        return self._open[number], self._offsets[number]

    def token_rows(self):
        """(input_ids, loss_mask) of the whole split per shard, read without any feature bytes
        (rows of one shard are concatenated: a pass over the tokens needs no row boundaries)."""
        for number in range(len(self.shards)):
            handle, _ = self._shard(number)
            yield handle.get_tensor("input_ids"), handle.get_tensor("loss_mask")

    def __getitem__(self, index: int) -> CachedRow:
        if not 0 <= index < self.length:
            raise IndexError(index)
        number = max(i for i, start in enumerate(self.starts) if start <= index)
        handle, offsets = self._shard(number)
        local = index - self.starts[number]
        a, b = offsets[local], offsets[local + 1]
        names = set(handle.keys())
        take = lambda name: handle.get_slice(name)[a:b]  # noqa: E731 (reads only this row's bytes)
        return CachedRow(
            input_ids=take("input_ids").tolist(), loss_mask=take("loss_mask").tolist(),
            position_ids=take("position_ids").tolist() if "position_ids" in names else None,
            features={layer: take(f"features.{layer}") for layer in self.layers},
            teacher_ids=take("teacher_ids") if "teacher_ids" in names else None,
            teacher_logprobs=take("teacher_logprobs") if "teacher_logprobs" in names else None
        )


def cached_dropped(recipe) -> dict[str, dict[str, int]]:
    """What building the recipe's cache dropped ({source: {reason: records}}; see `dropped_note`), so
    a run that trains from the cache reports it too. A cache index without the record gives {}."""
    index_path = Path(recipe.data.feature_cache.path) / INDEX
    return json.loads(index_path.read_text()).get("dropped", {}) if index_path.is_file() else {}


def open_feature_cache(recipe, backbone: Backbone) -> tuple[CachedDataset, CachedDataset, list[str]]:
    """The train and held-out datasets of the recipe's cache (and its data statistics lines), after
    checking that it fits the recipe."""
    folder = Path(recipe.data.feature_cache.path)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise ConfigError(
            f"data.feature_cache.path: {folder} has no {INDEX}: build it first with `draftheads cache-features RECIPE` "
            "(an interrupted build resumes)"
        )
    index = json.loads(index_path.read_text())
    saved = CacheIdentity(**index["identity"])
    wanted = identity_for(recipe, backbone)
    problems = []
    for name in ("hidden_size", "vocab_size", "tokenizer_fingerprint", "data_fingerprint"):
        if getattr(saved, name) != getattr(wanted, name):
            problems.append(f"{name} {getattr(saved, name)} (cache) vs {getattr(wanted, name)} (recipe)")
    # A backbone that trains makes cached features stale: joint training reads only the rows and,
    # for train.backbone.teacher=cache, the original model's top-k log-probs.
    joint = recipe.train.backbone.trains
    missing = sorted(set(wanted.layers) - set(saved.layers))
    if missing and not joint:
        problems.append(f"layers {missing} are not cached (cache has {saved.layers})")
    if joint and recipe.train.backbone.teacher == "cache" and not saved.teacher_topk:
        problems.append("train.backbone.teacher=cache needs the teacher top-k, and the cache has none (build it with teacher_topk > 0)")
    if recipe.train.loss.soft_label_weight > 0 and LAST not in saved.layers and not saved.teacher_topk:
        problems.append("soft labels need the final hidden state or teacher top-k, and the cache has neither")
    if problems:
        raise ConfigError(
            f"data.feature_cache.path: {folder} was made for base '{saved.base_model}' with other settings: "
            + "; ".join(problems) + ". Rebuild it with `draftheads cache-features` for this recipe"
        )
    layers = [] if joint else wanted.layers
    train, held = (CachedDataset(folder, index["splits"][s], layers) for s in SPLITS)
    read = (
        "rows and teacher top-k (the backbone trains: features are recomputed)"
        if joint
        else f"features ({', '.join(map(str, saved.layers))}; {saved.dtype})"
    )
    lines = index.get("stats", []) + [f"{read} from the cache in {folder}"]
    return train, held, lines
