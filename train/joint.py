"""What the backbone does in training, behind one interface the loop calls without asking which:
`FrozenBackbone` (Medusa-1: it only supplies features) or `TrainableBackbone` (Medusa-2: joint
training of a LoRA adapter or every weight).

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
from draftheads.models.heads_folder import ADAPTER_DIR, BACKBONE_DIR
from draftheads.train.config import BackboneTraining
from draftheads.train.schedules import ramp
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


def batch_features(backbone: Backbone, batch: dict, layers: list[int]) -> dict[int, torch.Tensor]:
    """The backbone features of a batch without a graph: read from the hidden-state cache when the
    batch carries them, else computed now."""
    if batch.get("features"):
        dtype = backbone.lm_head.weight.dtype
        return {layer: batch["features"][layer].to(dtype) for layer in layers}
    with torch.no_grad():
        return backbone.features(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"), layers).features


def whole_outside_layers(backbone: Backbone) -> None:
    """Make every parameter outside the decoder layers whole again on this process, in place.

    Under DeepSpeed ZeRO-3, transformers builds the model inside `deepspeed.zero.Init`, so no process
    ever holds the whole target: each keeps a partition of every parameter. The layers stay so (the
    training forward gathers each as it runs); the embedding, final norm and lm_head, which heads
    read directly (embeddings, lm_head rows, shapes), are gathered once and kept as plain tensors
    (a trained backbone's are partitioned again when it is prepared, after the heads are built).
    Call it on every process at once: the gather is collective."""
    import deepspeed

    inside = {id(p) for p in backbone.layers.parameters()}
    outside = [
        (module, name, p)
        for module in backbone.model.modules()
        for name, p in module.named_parameters(recurse=False)
        if id(p) not in inside
    ]
    partitioned = list({id(p): p for _, _, p in outside if hasattr(p, "ds_id")}.values())
    if not partitioned:
        return
    with deepspeed.zero.GatheredParameters(partitioned):
        whole = {id(p): nn.Parameter(p.detach().clone(), requires_grad=False) for p in partitioned}  # tied weights stay tied
    for module, name, p in outside:
        if id(p) in whole:
            module._parameters[name] = whole[id(p)]


def whole_last_layer(backbone: Backbone):
    """A context in which the last decoder layer, partitioned by ZeRO-3, is whole on every process:
    heads built in it may start from a copy of its weights. Collective."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(backbone.layers[-1].parameters()))


def gather_one_layer_ahead(accelerator, layers: nn.ModuleList) -> None:
    """Bound what ZeRO-3 gathers of a frozen target to the running layer and the next one.

    A frozen target's layers run once a step, in order, and never in backward. DeepSpeed's
    defaults (up to 1e9 parameters live, a 5e7-element prefetch bucket, reuse within 1e9 steps)
    gather far ahead once they have traced a step: on a model below a billion parameters, every
    layer at once (bench/zero3_online.py measures both). Keys the launch's
    DeepSpeed config already sets are kept ("auto" counts as unset). The settings hold engine-wide:
    the heads, a small part of the engine, are gathered as they run too. Call it before
    `accelerator.prepare`, which reads them."""
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.setdefault("zero_optimization", {})
    largest = max(sum(getattr(p, "ds_numel", p.numel()) for p in layer.parameters()) for layer in layers)
    bound = {"stage3_prefetch_bucket_size": largest, "stage3_max_live_parameters": 2 * largest, "stage3_max_reuse_distance": 0}
    zero.update({key: value for key, value in bound.items() if zero.get(key, "auto") == "auto"})


class FrozenBackbone:
    """Medusa-1: the backbone supplies features (computed without a graph, or read from the
    hidden-state cache) and never changes; every joint-training hook is a no-op.

    When the launch shards parameters (DeepSpeed ZeRO-3, FSDP) and features are computed online,
    the decoder layers go into the prepared module (`module`), so each process holds only its share
    of them and the training forward gathers each layer as it runs. The embedding, the final norm
    and the lm_head stay whole on every process: every head embeds tokens and every loss chunk of
    every depth projects through the lm_head, so gathering them per call would move the largest
    matrices many times a step, and they are a small part of a large model."""

    trains = False
    has_original = False

    def __init__(self, backbone: Backbone, sharded: bool = False):
        self.backbone = backbone
        self.sharded = sharded
        """Whether the decoder layers are prepared (and sharded) with the heads."""
        self.module: nn.Module | None = backbone.layers if sharded else None

    def param_groups(self, lr: float) -> list[dict]:
        """No backbone parameters to optimise."""
        return []

    def begin_step(self, step: int) -> tuple[bool, float]:
        """(joint stage, λ0): never joint; the heads' losses count fully. Prepared layers are put
        back in eval mode: preparing or `train()` on the module must not turn on their dropout."""
        if self.module is not None:
            self.module.eval()
        return False, 1.0

    def features(self, batch: dict, layers: list[int]) -> dict[int, torch.Tensor] | None:
        """The features the batch trains on (see `batch_features`); None when the layers are
        sharded: the training forward computes them, inside the prepared module."""
        if self.sharded and not batch.get("features"):
            return None
        return batch_features(self.backbone, batch, layers)

    def progress(self, backbone_loss: float, head_weight: float, lrs: list[float]) -> tuple[dict, dict]:
        """(progress-bar fields, tracker values) of a step: nothing to add."""
        return {}, {}

    def summary(self, state: dict[str, torch.Tensor], history: list[dict]):
        """(training.json section, writer of the trained backbone into the heads folder): none."""
        return None, None


class TrainableBackbone:
    """The backbone as joint training sees it: trainable parameters, the original model, export."""

    trains = True

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

    def param_groups(self, lr: float) -> list[dict]:
        """The backbone's optimizer group, at the run's learning rate."""
        return [{"params": self.trainable_parameters(), "lr": lr}]

    def begin_step(self, step: int) -> tuple[bool, float]:
        """(joint stage, λ0) of optimizer step `step`: heads alone for `heads_only_steps`, then
        joint with λ0 ramped from the first joint step; the backbone is in train mode when joint."""
        cfg = self.cfg
        joint = step >= cfg.heads_only_steps
        self.module.train(joint)
        weight = cfg.head_loss_weight
        if joint:
            weight *= ramp(step - cfg.heads_only_steps, cfg.head_weight_warmup_steps, cfg.head_weight_warmup)
        return joint, weight

    def features(self, batch: dict, layers: list[int]) -> None:
        """None: the training forward computes them, keeping the graph in the joint stage."""
        return None

    def progress(self, backbone_loss: float, head_weight: float, lrs: list[float]) -> tuple[dict, dict]:
        """(progress-bar fields, tracker values) of a step: L_backbone, λ0 and the backbone's learning rate."""
        shown = {"backbone_loss": f"{backbone_loss:.4f}", "head_weight": f"{head_weight:.3f}"}
        return shown, {"train/loss_backbone": backbone_loss, "train/head_weight": head_weight, "train/lr_backbone": lrs[1]}

    def summary(self, state: dict[str, torch.Tensor], history: list[dict]):
        """(training.json section, writer of the trained backbone into the heads folder) from the
        gathered state dict of the training module."""
        backbone_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        section = {**self.describe(), "drift": history[-1].get("drift") if history else None}
        return section, lambda folder: self.export(backbone_state, folder)

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
        raise ConfigError(
            "train.backbone.lora.target_modules: the lm_head and the embedding cannot take an adapter; train them with mode full"
        )
    return peft_model

