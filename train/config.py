"""The recipe: one typed config for every stage, loaded from YAML with `key.sub=value` overrides.

Each stage owns its section's dataclass (`BackboneConfig` in models/backbone.py, `DataConfig` in
data/config.py); this module assembles them into `Recipe` and does the loading, so a recipe file is
checked as a whole before anything runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from draftheads.data.config import DataConfig, DistillConfig
from draftheads.models.backbone import BackboneConfig
from draftheads.models.heads.base import HeadConfig
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.errors import ConfigError
from draftheads.utils.paths import recipes_dir
from draftheads.utils.typed_config import apply_overrides, dump_yaml, from_dict, merge, read_yaml, to_dict
from draftheads.models.heads_folder import RECIPE_NAME


@dataclass
class LossConfig:
    """How per-depth head losses are formed and weighted."""

    decay: float = 0.8
    """Weight of depth k is decay^(k-1): nearer heads matter more for acceptance."""
    soft_label_weight: float = 0.0
    """Mix of soft labels: 0 = cross-entropy on the data's tokens, 1 = KL to the backbone's own
    distribution for the same token (self-distillation from the same forward, no extra cost)."""
    feature_weight: float = 0.0
    """Weight of feature regression for families that predict features (Clover-2, EAGLE): smooth L1
    between depth k's predicted feature at t and the backbone's hidden state at t+k, averaged over
    the hidden size and added to that depth's loss. Other families ignore it."""
    chunk_size: int = 2048
    """Positions projected to the vocabulary at once; bounds memory (with several chunks per depth,
    logits are recomputed in backward instead of kept)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.soft_label_weight <= 1.0:
            raise ValueError(f"soft_label_weight must be in [0, 1], got {self.soft_label_weight}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {self.feature_weight}")
        if self.decay <= 0:
            raise ValueError(f"decay must be positive, got {self.decay}")


@dataclass
class LoraSettings:
    """The LoRA adapter of `backbone.mode: lora` (peft)."""

    rank: int = 16
    """Adapter rank r."""
    alpha: float = 32.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the adapter's input while training."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names (or name suffixes) that get adapters; `[all-linear]` is every linear layer but the lm_head."""
    load_in_bits: Literal[4, 8] | None = None
    """Load the frozen base in 4- or 8-bit (QLoRA); needs a CUDA GPU and bitsandbytes."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")


@dataclass
class BackboneTraining:
    """Whether and how the backbone trains with the heads (Medusa-2). `frozen` is Medusa-1.

    The loss is L = L_backbone + λ0(step) · Σ_k decay^(k-1) · L_head_k.
    """

    mode: Literal["frozen", "lora", "full"] = "frozen"
    """frozen: heads only; lora: a peft LoRA adapter on the backbone trains too; full: every backbone weight trains."""
    objective: Literal["kl", "lm"] = "kl"
    """L_backbone. kl: KL from the original model's next-token distribution to the trained one's (for
    self-distilled data; keeps the served model close to the original); lm: cross-entropy on the data's tokens."""
    teacher: Literal["model", "cache"] = "model"
    """Where the original distribution comes from (objective kl). model: lora runs the same model with the
    adapter disabled (no second copy), full keeps a frozen reference copy; cache: the teacher top-k log-probs
    of the hidden-state cache (`data.feature_cache`, built with teacher_topk > 0)."""
    head_loss_weight: float = 0.2
    """λ0: weight of the summed head losses against L_backbone."""
    head_weight_warmup: Literal["constant", "linear", "sine"] = "sine"
    """How λ0 ramps up from 0 once joint training starts (untrained heads' gradients would otherwise pull the backbone)."""
    head_weight_warmup_steps: int = 0
    """Steps of that ramp (0: λ0 from the first joint step)."""
    heads_only_steps: int = 0
    """Two-stage recipe: train the heads alone (backbone frozen) for this many steps, then jointly."""
    heads_lr_multiplier: float = 1.0
    """The heads' learning rate is train.lr times this; the backbone's is train.lr."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in backward (less memory, about a third more compute)."""
    merge_adapter: bool = False
    """lora: export the merged full backbone (`backbone/`) instead of the adapter (`adapter/`)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapter settings (mode lora)."""

    def __post_init__(self) -> None:
        if self.head_loss_weight <= 0:
            raise ValueError(f"head_loss_weight must be positive, got {self.head_loss_weight}")
        if self.heads_lr_multiplier <= 0:
            raise ValueError(f"heads_lr_multiplier must be positive, got {self.heads_lr_multiplier}")
        for name in ("head_weight_warmup_steps", "heads_only_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def trains(self) -> bool:
        """Whether backbone weights change in this run."""
        return self.mode != "frozen"


@dataclass
class TrainConfig:
    """The optimisation loop."""

    output_dir: str = "outputs/run"
    """Folder for recipe.yaml, checkpoints/, logs/ and the exported heads/."""
    max_steps: int = 1000
    """Optimizer steps (the data is cycled as often as needed)."""
    batch_size: int = 4
    """Rows per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW) of the backbone; the heads' is this times backbone.heads_lr_multiplier."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 50
    """Linear warmup from 0 to `lr`."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` (cosine and linear)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm; null to disable."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto`: bf16 on GPUs that support it, else full precision."""
    seed: int = 42
    """Seeds data order and initialisation."""
    eval_every: int = 100
    """Held-out evaluation every this many steps (and before the first and after the last)."""
    eval_batches: int | None = None
    """Cap on held-out batches per evaluation; null for all."""
    save_every: int = 200
    """Checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept; older ones are deleted."""
    resume_from: str | None = None
    """`latest` (the newest checkpoint in output_dir, if any) or a checkpoint folder."""
    log_every: int = 10
    """Tracker logging interval in steps."""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """accelerate trackers: tensorboard, wandb (WANDB_MODE=offline works), ... Empty for none."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss terms and weights."""
    backbone: BackboneTraining = field(default_factory=BackboneTraining)
    """Frozen backbone (Medusa-1) or joint training with a LoRA or full backbone (Medusa-2)."""

    def __post_init__(self) -> None:
        if self.backbone.heads_only_steps >= self.max_steps and self.backbone.trains:
            raise ValueError(
                f"backbone.heads_only_steps ({self.backbone.heads_only_steps}) leaves no joint steps of max_steps {self.max_steps}"
            )
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Recipe:
    """A complete, runnable description of a job."""

    model: BackboneConfig = field(default_factory=BackboneConfig)
    """The base model heads are trained for."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training conversations and how they are tokenised."""
    heads: HeadConfig | None = None
    """The head family (`head_type`, one of the registered families) and its settings; training and
    the hidden-state cache need it, data generation does not. No family is the default."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Self-distillation data generation (`draftheads gen-data`); training does not read it."""


def find_recipe(name_or_path: str) -> Path:
    """A recipe path as given, or a recipe shipped with draftheads (`smollm2-135m/data`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = recipes_dir() / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{name_or_path}: no such recipe file, and no shipped recipe of that name")


def load_recipe(source: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or the defaults when `source` is None) and apply overrides.

    Errors name the file and the key path: `recipes/x.yaml: data.sorces: unknown key (did you mean 'sources'?)`.
    """
    label = "defaults" if source is None else str(source)
    given = {} if source is None else read_yaml(find_recipe(str(source)))
    # Start from the defaults so that overrides can reach into default lists (data.sources.0.limit=5).
    defaults = to_dict(Recipe())
    data = apply_overrides(merge(copy.deepcopy(defaults), copy.deepcopy(given)), list(overrides or []))
    head_type = data.get("heads", {}).get("head_type") if isinstance(data.get("heads"), dict) else None
    if isinstance(head_type, str):
        # The family named (in the file or an override) fills the gaps with its own defaults.
        from draftheads.models.registry import HEADS

        try:
            defaults["heads"] = to_dict(HEADS.config_class(head_type, "heads.head_type")())
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        data = apply_overrides(merge(defaults, copy.deepcopy(given)), list(overrides or []))
    try:
        return from_dict(Recipe, data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default filled in)."""
    return dump_yaml(recipe)


def save_resolved(recipe: Recipe, directory: str | Path) -> Path:
    """Write the resolved recipe as RECIPE_NAME in `directory` (atomically) and return its path."""
    path = Path(directory) / RECIPE_NAME
    atomic_write_text(path, recipe_yaml(recipe))
    return path
