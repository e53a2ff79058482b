"""Joint training of the backbone with the heads (Medusa-2): a LoRA adapter or every weight.

`TrainableBackbone` makes the backbone trainable as the recipe says and answers for the ORIGINAL
model, which the KL objective and the drift metrics compare against: with LoRA it is the same
model with the adapter disabled (no second copy in memory), with a full backbone a frozen copy
made before training (or nothing, when the teacher comes from the hidden-state cache). It also
exports what changed: the adapter in peft format, or a full backbone folder.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.models.draft_model import ADAPTER_DIR, BACKBONE_DIR
from draftheads.train.config import BackboneTraining
from draftheads.utils.errors import ConfigError


def quantization_config(cfg: BackboneTraining):
    """The bitsandbytes config for a 4-/8-bit LoRA base, or None; a clear error where it cannot run."""
    bits = cfg.lora.load_in_bits
    if bits is None:
        return None
    where = "train.backbone.lora.load_in_bits"
    if cfg.mode != "lora":
        raise ConfigError(f"{where}: a quantised base only trains through an adapter; set train.backbone.mode=lora")
    if not torch.cuda.is_available():
        raise ConfigError(f"{where}: {bits}-bit loading needs a CUDA GPU (bitsandbytes); this machine has none: set it to null")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401  (imported only to check that it is installed)
    except ImportError:
        raise ConfigError(f"{where}: {bits}-bit loading needs bitsandbytes: pip install bitsandbytes") from None
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


class TrainableBackbone:
    """The backbone as joint training sees it: trainable parameters, the original model, export."""

    def __init__(self, backbone: Backbone, cfg: BackboneTraining):
        self.backbone = backbone
        self.cfg = cfg
        self.reference: Backbone | None = None
        model = backbone.model
        if cfg.mode == "lora":
            self.module = _with_adapter(backbone, cfg)
        else:
            model.requires_grad_(True)
            self.module = model
            if cfg.objective == "kl" and cfg.teacher == "model":
                # A frozen copy of the original: the full backbone changes under the optimizer.
                self.reference = Backbone(copy.deepcopy(model).requires_grad_(False).eval(), backbone.tokenizer, backbone.location)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The backbone parameters the optimizer updates."""
        return [p for p in self.module.parameters() if p.requires_grad]

    @property
    def has_original(self) -> bool:
        """Whether the original model can be run (not when its distribution comes from the cache)."""
        return self.cfg.mode == "lora" or self.reference is not None

    @contextmanager
    def original(self):
        """The original model as a `Backbone`, in eval mode, for the duration of the block."""
        if self.reference is not None:
            yield self.reference
            return
        if self.cfg.mode != "lora":
            raise ConfigError("the original model is not kept in this run (train.backbone.teacher: cache)")
        was_training = self.module.training
        self.module.eval()  # the teacher must not see dropout
        try:
            with self.module.disable_adapter():
                yield self.backbone
        finally:
            self.module.train(was_training)

    @torch.no_grad()
    def original_hidden(self, batch: dict) -> torch.Tensor:
        """The original model's final normed hidden states for a batch."""
        with self.original() as original:
            return original.features(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")).features[LAST]

    def original_lm_head(self) -> nn.Module:
        """The original's output projection (a LoRA run never adapts it; a full run trains it)."""
        return self.reference.lm_head if self.reference is not None else self.backbone.lm_head

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> str:
        """Write the trained backbone into `folder` from its (gathered) state dict; returns the
        subfolder's name: the adapter (peft format) or, for full runs and merged adapters, a
        complete model folder with its tokenizer."""
        if self.cfg.mode == "lora" and not self.cfg.merge_adapter:
            self.module.save_pretrained(str(folder / ADAPTER_DIR), state_dict=state)
            return ADAPTER_DIR
        model = self.module
        if self.cfg.mode == "lora":
            model.load_state_dict(state, strict=False)
            model = model.merge_and_unload()
            state = None
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.save_pretrained(str(folder / BACKBONE_DIR), state_dict=state)
        self.backbone.tokenizer.save_pretrained(str(folder / BACKBONE_DIR))
        return BACKBONE_DIR

    def describe(self) -> dict:
        """What changed in the backbone, for training.json and the model card."""
        total = sum(p.numel() for p in self.module.parameters())
        info = {
            "mode": self.cfg.mode,
            "objective": self.cfg.objective,
            "trainable_parameters": sum(p.numel() for p in self.trainable_parameters()),
            "total_parameters": total,
        }
        if self.cfg.mode == "lora":
            lora = self.cfg.lora
            info.update(rank=lora.rank, alpha=lora.alpha, target_modules=list(lora.target_modules), merged=self.cfg.merge_adapter)
        return info


def _with_adapter(backbone: Backbone, cfg: BackboneTraining):
    """Inject a LoRA adapter into the backbone in place; returns the peft model wrapping it."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.lora import LoraLayer

    lora = cfg.lora
    targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    model = backbone.model
    if lora.load_in_bits is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. no module matches target_modules
        raise ConfigError(f"train.backbone.lora.target_modules: {exc}") from None
    if isinstance(backbone.lm_head, LoraLayer) or isinstance(backbone.embed_tokens, LoraLayer):
        # Heads share the lm_head and the embedding as the ORIGINAL model has them; the teacher's
        # projection is taken outside the adapter-disabled block.
        raise ConfigError("train.backbone.lora.target_modules: the lm_head and the embedding cannot take an adapter; train them with mode full")
    return peft_model

