"""A recipe for a real base model, checked here before any GPU time is spent on it.

The base's `config.json` (shipped beside the recipe, or the base's own) builds the base and the
heads at their real shapes on the meta device, which costs no memory: the shapes, the fused layers
and the draft vocabulary are checked against the real architecture. Then a shrunk copy of the same
architecture (the same config class, RoPE settings and layer types, a vocabulary at least as large
as the demo tokenizer's; four narrow layers) is written with random weights and the demo model's tokenizer, and the recipe itself, with
its data and budget cut to a few steps, trains heads on it through `train()` and decodes with them
through the engine: the decode must emit exactly the tokens the shrunk base emits alone.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.models.backbone import Backbone, ModelLocation, load_tokenizer
from draftheads.models.draft_model import DraftModel
from draftheads.models.registry import HEADS
from draftheads.train.config import Recipe, find_recipe, load_recipe
from draftheads.utils.errors import ConfigError

CONFIG_FILE = "config.json"
"""The base's config, shipped beside recipes for bases that are not on this machine."""
STAND_IN_TOKENIZER = "demo:smollm2-135m"
"""Whose tokenizer the shrunk base uses (the real one may be gated or absent offline)."""
SHRUNK_LAYERS = 4
SHRUNK_HIDDEN = 64


@dataclass
class DryRunReport:
    """What a dry run of a recipe found."""

    recipe: str
    """The recipe file."""
    base_parameters: int
    """Parameters of the base at its real shapes."""
    head_parameters: int
    """Parameters of the heads at their real shapes (the draft vocabulary's projection included)."""
    shrunk: str
    """The shrunk architecture that trained and decoded, in words."""
    losses: list[float]
    """The training loss of each step on the shrunk base."""
    tokens: int
    """Tokens the heads' decode emitted on the shrunk base."""
    mismatches: int
    """Tokens where that decode differs from the shrunk base's own greedy decode (must be 0)."""


def base_config(recipe_path: str | Path, recipe: Recipe):
    """The base's config: `config.json` beside the recipe when it ships one, else the base's own."""
    from transformers import AutoConfig

    shipped = find_recipe(str(recipe_path)).parent / CONFIG_FILE
    if shipped.is_file():
        return AutoConfig.for_model(**json.loads(shipped.read_text()))
    from draftheads.models.backbone import resolve_location
    from draftheads.utils.errors import ModelLoadError

    location = resolve_location(recipe.model.base, recipe.model.revision)
    try:
        return AutoConfig.from_pretrained(location.path, revision=location.revision, trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"{recipe_path}: no {CONFIG_FILE} beside the recipe, and the config of {recipe.model.base} cannot be read ({reason}); "
            f"put the base's {CONFIG_FILE} beside the recipe, or give model.base as a local folder"
        ) from None


def model_dtype(recipe: Recipe, config) -> torch.dtype:
    """The base's dtype in training (auto: the checkpoint's); the heads are built in it too."""
    from draftheads.models.backbone import DTYPES

    name = (
        recipe.model.dtype
        if recipe.model.dtype != "auto"
        else str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or "float32")
    )
    return DTYPES.get(name.removeprefix("torch."), torch.float32)


def meta_parts(recipe: Recipe, config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The base and the recipe's heads at their real shapes on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    heads_config = HEADS.required(recipe.heads, "heads")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=model_dtype(recipe, config))
        backbone = Backbone(model, None, ModelLocation(recipe.model.base, recipe.model.base, None, "config only"))
        try:
            heads = HEADS.get(heads_config.head_type).build(heads_config, backbone)
        except ValueError as exc:
            raise ConfigError(f"heads: {exc}") from None
    return model, heads


def shrunk_config(config, vocab_size: int):
    """`config` with SHRUNK_LAYERS layers SHRUNK_HIDDEN wide, its head-count ratios, its MLP ratio
    and its RoPE settings kept, and a vocabulary at least `vocab_size` (the stand-in tokenizer's)."""
    small = copy.deepcopy(config)
    heads = max(config.num_attention_heads // 8, 2)
    kv_ratio = (
        config.num_attention_heads // getattr(config, "num_key_value_heads", None) if getattr(config, "num_key_value_heads", None) else 1
    )
    small.num_hidden_layers = SHRUNK_LAYERS
    small.hidden_size = SHRUNK_HIDDEN
    small.intermediate_size = SHRUNK_HIDDEN * config.intermediate_size // config.hidden_size
    small.num_attention_heads = heads
    small.num_key_value_heads = max(heads // kv_ratio, 1)
    if getattr(config, "head_dim", None) is not None:
        small.head_dim = SHRUNK_HIDDEN // heads
    if getattr(config, "max_window_layers", None) is not None:
        small.max_window_layers = SHRUNK_LAYERS
    if getattr(config, "layer_types", None):  # per-layer attention kinds (full, sliding): the first ones
        small.layer_types = list(config.layer_types[:SHRUNK_LAYERS])
    small.vocab_size = max(config.vocab_size, vocab_size)
    return small


def shrunk_layer(layer: int, layers: int) -> int:
    """Where a fused layer of a `layers`-deep base lies in the shrunk one (same relative depth)."""
    return min(round(layer * SHRUNK_LAYERS / layers), SHRUNK_LAYERS - 1)


def dry_run(recipe_path: str | Path, work: Path, steps: int = 2, tokens: int = 16) -> DryRunReport:
    """Build the recipe's base and heads at real shapes on the meta device, then train `steps`
    steps and decode `tokens` tokens on a shrunk copy of the base in `work`."""
    recipe = load_recipe(recipe_path)
    config = base_config(recipe_path, recipe)
    model, heads = meta_parts(recipe, config)
    tokenizer = load_tokenizer(STAND_IN_TOKENIZER)
    small = shrunk_config(config, len(tokenizer))
    base_dir = work / "base"
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(small).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    trained = _shrunk_recipe(recipe_path, recipe, config, base_dir, work / "out", steps)
    from draftheads.train.loop import train

    result = train(trained, progress=False)
    draft = DraftModel.from_pretrained(work / "out" / "heads")
    prompt = draft.backbone.tokenizer("Write a haiku about the sea.")["input_ids"]
    config_out = GenerationConfig(max_new_tokens=tokens, eos_token_ids=())
    alone = Engine(draft.backbone).generate(prompt, config_out).tokens
    drafted = Engine(draft.backbone, draft.heads, TreeSpec("dynamic", budget=8, width=4)).generate(prompt, config_out).tokens
    words = (
        f"{type(small).__name__}: {SHRUNK_LAYERS} layers x {SHRUNK_HIDDEN}, "
        f"{small.num_attention_heads} heads / {small.num_key_value_heads} KV, vocabulary {small.vocab_size}"
    )
    return DryRunReport(
        recipe=str(recipe_path), base_parameters=sum(p.numel() for p in model.parameters()),
        head_parameters=sum(p.numel() for p in heads.parameters()), shrunk=words, losses=list(result.losses),
        tokens=len(drafted), mismatches=sum(a != b for a, b in zip(alone, drafted)) + abs(len(alone) - len(drafted)),
    )


def short_run(recipe: Recipe, steps: int) -> list[str]:
    """Overrides that cut a recipe to `steps` optimizer steps, evaluated and saved at the last; a
    jointly trained backbone gets one step of heads alone, then joint ones (at least 2 steps)."""
    joint = []
    if recipe.train.backbone.trains:
        steps = max(steps, 2)
        joint = ["train.backbone.heads_only_steps=1", "train.backbone.head_weight_warmup_steps=1"]
    return joint + [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.save_every={steps}"]


def _shrunk_recipe(recipe_path, recipe: Recipe, config, base_dir: Path, out: Path, steps: int) -> Recipe:
    """The recipe with its base, data and budget cut for the shrunk base (everything else as written)."""
    overrides = [
        f"model.base={base_dir}", "model.dtype=float32", "data.sources=[{path: demo:sharegpt, limit: 24}]", "data.max_length=128",
        "data.eval_fraction=0.2", "data.feature_cache.path=null", f"train.output_dir={out}", "train.batch_size=2", "train.grad_accum=1",
        "train.warmup_steps=1", "train.eval_batches=1", "train.trackers=[]", 'train.mixed_precision="no"', "train.resume_from=null",
    ]
    overrides += short_run(recipe, steps)
    fused = getattr(recipe.heads, "fuse_layers", None)
    if fused:
        overrides.append(f"heads.fuse_layers=[{', '.join(str(shrunk_layer(i, config.num_hidden_layers)) for i in fused)}]")
    return load_recipe(recipe_path, overrides)

