"""`draftheads plan`: what a recipe needs per process under a launch, before it runs.

The base and the heads are built at their real shapes on the meta device (train/dryrun.py), which
costs no memory, and the heads' training forward runs there too: autograd's saved tensors give the
heads' activations and a FLOP counter their compute, both measured from the code that will train,
at the recipe's batch. The rest follows from the parameter counts and the strategy:

- a frozen base is held whole by every process, except under ZeRO-3 (and FSDP computing features
  online), where its decoder layers are sharded and only the embedding, final norm and lm_head,
  which the heads read at every step, stay whole; computing features, the launch gathers the
  running layer whole and prefetches the next (ZeRO-3: train/joint.py `gather_one_layer_ahead`;
  FSDP's default forward prefetch);
- what trains (heads in the base's dtype, as they are built; a LoRA adapter in fp32, as peft keeps
  it; or the full backbone in its dtype) has weights, gradients and AdamW's two moments; ZeRO-2 shards the gradients and moments over the
  processes, ZeRO-3 and FSDP the weights too; DDP keeps a second copy of the gradients in its buckets;
- the logits of the loss live one chunk at a time when several chunks are needed per depth
  (recomputed in backward), else every depth's are kept;
- a framework term covers the runtime itself (CUDA context and allocator reserve, or the CPU
  process's libraries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from draftheads.models.backbone import decoder_layers
from draftheads.train.config import Recipe, load_recipe
from draftheads.train.dryrun import base_config, meta_parts, model_dtype
from draftheads.utils.errors import ConfigError

GIB = 1024**3
FRAMEWORK_BYTES = {"cuda": int(1.0 * GIB), "cpu": int(0.35 * GIB)}
"""The runtime's own memory per process: CUDA context and allocator reserve on a GPU; on the CPU,
the process with torch, transformers and accelerate imported and the tokenizer and
tokenised data beside it."""
DEFAULT_TFLOPS = 400.0
"""Sustained bf16 TFLOP/s per GPU the time estimate assumes (about 40% of an H100's dense peak)."""


@dataclass
class Launch:
    """How a run is spread over processes."""

    processes: int
    """Processes (one per GPU, or CPU processes)."""
    strategy: str
    """single, ddp, zero2, zero3 or fsdp."""
    device: str
    """cuda or cpu."""
    memory_gb: float | None
    """Memory per process the plan must fit in (GiB); None: no limit checked."""


@dataclass
class Term:
    """One part of a process's memory."""

    name: str
    """What it is."""
    bytes: int
    """Its size per process."""
    how: str
    """How it was counted."""
    fix: str
    """What setting makes it smaller."""


@dataclass
class Sizes:
    """What the memory terms are counted from."""

    base: int
    """Parameters of the base."""
    base_outside_layers: int
    """Parameters of the base outside its decoder layers (embedding, final norm, lm_head)."""
    heads: int
    """Parameters of the heads."""
    adapter: int
    """Parameters of the LoRA adapter (0: none)."""
    heads_saved: int
    """Bytes the heads' training forward saves for backward over one micro-batch."""
    backbone_saved: int
    """Bytes the backbone's forward would save for backward over one micro-batch."""
    rows: int
    """Tokens of one micro-batch."""


@dataclass
class Plan:
    """What a recipe needs per process under a launch."""

    recipe: str
    """The recipe file."""
    launch: Launch
    """The launch it was planned for."""
    base_parameters: int
    """Parameters of the base."""
    head_parameters: int
    """Parameters of the heads."""
    trainable_parameters: int
    """Parameters that train (heads, plus an adapter or the backbone)."""
    tokens_per_step: int
    """Tokens per optimizer step over every process (rows x max_length x accumulation x processes)."""
    memory: list[Term] = field(default_factory=list)
    """Memory per process, by term."""
    flops_per_token: float = 0.0
    """Training FLOPs per token (forward and backward of what trains, forward of what feeds it)."""
    cache_bytes_per_token: int | None = None
    """Disk of the hidden-state cache per token (None: this recipe trains without one)."""
    data_tokens: int | None = None
    """Tokens of the recipe's data, when its sources are on this machine."""
    steps: int = 0
    """Optimizer steps the recipe trains for."""

    @property
    def total(self) -> int:
        return sum(term.bytes for term in self.memory)

    def refusal(self) -> str | None:
        """Why the launch does not fit (the largest term and its fix), or None."""
        if self.launch.memory_gb is None or self.total <= self.launch.memory_gb * GIB:
            return None
        worst = max(self.memory, key=lambda term: term.bytes)
        return (
            f"{self.recipe}: needs {self.total / GIB:.1f} GiB per process, more than {self.launch.memory_gb:g} GiB; the largest term is "
            f"{worst.name} ({worst.bytes / GIB:.1f} GiB): {worst.fix}"
        )


def launch_of(accelerate_config: str | None, gpus: int | None, gpu_memory: float | None) -> Launch:
    """The launch an accelerate config describes (None: one process), with `gpus` processes if given."""
    if accelerate_config is None:
        settings = {}
    else:
        from draftheads.utils.paths import accelerate_config_path

        settings = yaml.safe_load(accelerate_config_path(accelerate_config).read_text()) or {}
    kind = settings.get("distributed_type", "NO")
    stage = (settings.get("deepspeed_config") or {}).get("zero_stage")
    if kind == "DEEPSPEED" and stage is None:
        raise ConfigError(
            f"--accelerate-config {accelerate_config}: deepspeed_config names no zero_stage (the plan reads the stage from there)"
        )
    strategy = {"NO": "single", "MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "FSDP": "fsdp"}.get(
        kind, f"zero{stage}" if kind == "DEEPSPEED" else None
    )
    if strategy is None:
        raise ConfigError(
            f"--accelerate-config {accelerate_config}: distributed_type {kind} is not one the plan knows (NO, MULTI_GPU, DEEPSPEED, FSDP)"
        )
    processes = gpus or settings.get("num_processes", 1)
    if processes > 1 and strategy == "single":
        strategy = "ddp"
    on_cpu = (
        settings.get("use_cpu")
        or kind == "MULTI_CPU"
        or (accelerate_config is None and gpus is None and gpu_memory is None and not torch.cuda.is_available())
    )
    device = "cpu" if on_cpu else "cuda"
    return Launch(processes, strategy, device, gpu_memory)


def make_plan(recipe_path: str | Path, overrides: list[str], launch: Launch) -> Plan:
    """The plan of a recipe under `launch`."""
    recipe = load_recipe(recipe_path, overrides)
    config = base_config(recipe_path, recipe)
    model, heads = meta_parts(recipe, config)
    cfg = recipe.train
    rows = cfg.batch_size * recipe.data.max_length  # tokens of one micro-batch
    base_params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in heads.parameters())
    adapter = _adapter_parameters(model, recipe) if cfg.backbone.mode == "lora" else 0
    trained_backbone = base_params if cfg.backbone.mode == "full" else 0
    plan = Plan(str(recipe_path), launch, base_params, head_params, head_params + adapter + trained_backbone,
                rows * cfg.grad_accum * launch.processes, steps=cfg.max_steps)
    compute = _compute_dtype(recipe, config, launch.device)
    heads_saved, heads_flops = _heads_forward(recipe, heads, config, compute)
    backbone_saved, backbone_flops = _backbone_forward(model, recipe.data.max_length, compute)
    outside = base_params - sum(p.numel() for p in decoder_layers(model, model.get_decoder()).parameters())
    sizes = Sizes(base_params, outside, head_params, adapter, heads_saved, backbone_saved * cfg.batch_size, rows)
    plan.memory = _memory_terms(recipe, launch, config, sizes)
    plan.flops_per_token = _flops_per_token(recipe, config, heads_flops / rows, backbone_flops / recipe.data.max_length, rows)
    if cfg.backbone.mode == "frozen":
        plan.cache_bytes_per_token = _cache_bytes_per_token(recipe, config)
    plan.data_tokens = _data_tokens(recipe)
    return plan


def _model_bytes(recipe: Recipe, config) -> int:
    """Bytes per base weight in the recipe's dtype."""
    return model_dtype(recipe, config).itemsize


def _adapter_parameters(model: torch.nn.Module, recipe: Recipe) -> int:
    """Parameters of the recipe's LoRA adapter: rank x (inputs + outputs) of each targeted linear layer."""
    lora = recipe.train.backbone.lora
    head = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        targeted = "all-linear" in lora.target_modules or any(name.endswith(t) for t in lora.target_modules)
        if isinstance(module, torch.nn.Linear) and module is not head and targeted:
            total += lora.rank * (module.in_features + module.out_features)
    return total


def _compute_dtype(recipe: Recipe, config, launch_device: str) -> torch.dtype:
    """The dtype activations are computed in: the autocast dtype under mixed precision, else the model's."""
    mode = recipe.train.mixed_precision
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or (mode == "auto" and launch_device == "cuda"):
        return torch.bfloat16
    return model_dtype(recipe, config)


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, memory-efficient) keeps for backward: its inputs and
    output, never the [T, T] scores that the meta device's reference decomposition would save."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("a stand-in for planning: never differentiated")


def _fused_sdpa(q, k, v, *args, **kwargs):
    return _FusedAttention.apply(q, k, v)


def _measured(run, inputs: tuple[torch.Tensor, ...] = ()) -> tuple[int, float]:
    """Bytes autograd saves while `run()` runs on the meta device (each storage once, at its largest;
    `inputs` not counted: they are terms of their own), with attention kept as a fused kernel keeps
    it, and `run`'s FLOPs (attention's included, from a second pass)."""
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode

    seen: dict[int, int] = {}
    inputs_seen = {t.untyped_storage()._cdata for t in inputs}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in inputs_seen:  # an expanded view holds its storage only; a slice no more than itself
            held = min(tensor.numel() * tensor.element_size(), storage.nbytes())
            seen[storage._cdata] = max(seen.get(storage._cdata, 0), held)
        return tensor

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    with FlopCounterMode(display=False) as counter:
        run()
    return sum(seen.values()), float(counter.get_total_flops())


def _heads_forward(recipe: Recipe, heads: torch.nn.Module, config, compute: torch.dtype) -> tuple[int, float]:
    """Bytes the heads' training forward saves for backward over one micro-batch, and its FLOPs, on
    the meta device at the recipe's shapes, in the compute dtype (what autocast makes of them)."""
    from draftheads.data.features import training_layers

    batch, length = recipe.train.batch_size, recipe.data.max_length
    with torch.device("meta"):
        features = {layer: torch.empty(batch, length, config.hidden_size, dtype=compute) for layer in training_layers(recipe.heads)}
        ids = torch.zeros(batch, length, dtype=torch.long)
        positions = torch.arange(length).expand(batch, length)
    computing = heads.to(compute)
    return _measured(lambda: computing(features, ids, positions, depths=recipe.heads.trained_depths()), tuple(features.values()))


def _backbone_forward(model: torch.nn.Module, length: int, compute: torch.dtype) -> tuple[int, float]:
    """Bytes the backbone's forward over one row of `length` tokens saves for backward (what a
    trained backbone keeps), and its FLOPs, on the meta device in the compute dtype."""
    with torch.device("meta"):
        ids = torch.zeros(1, length, dtype=torch.long)
        mask = torch.ones(
            1, 1, length, length, dtype=torch.bool
        )  # a 4-D mask as given: the causal one is built from values a meta tensor lacks
    computing = model.to(compute)
    return _measured(lambda: computing(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1))


def _memory_terms(recipe: Recipe, launch: Launch, config, sizes: Sizes) -> list[Term]:
    """Memory per process, term by term (see the module's docstring)."""
    cfg, mode = recipe.train, recipe.train.backbone.mode
    n, strategy = launch.processes, launch.strategy
    shard_weights = n if strategy in ("zero3", "fsdp") else 1
    shard_grads = n if strategy in ("zero2", "zero3", "fsdp") else 1
    shard_moments = n if strategy in ("zero1", "zero2", "zero3", "fsdp") else 1
    b = _model_bytes(recipe, config)
    base_bytes = _base_weight_bytes(recipe, config, sizes.base, b)
    frozen_sharded = mode == "frozen" and (strategy == "zero3" or (strategy == "fsdp" and not recipe.data.feature_cache.path))
    if mode != "frozen":
        base_bytes //= shard_weights
    elif frozen_sharded and n > 1:  # the layers sharded, the parts heads read whole (train/joint.py FrozenBackbone)
        base_bytes = sizes.base_outside_layers * b + (sizes.base - sizes.base_outside_layers) * b // n
    # heads are built in the base's dtype; peft keeps a LoRA adapter in fp32
    own = b * sizes.heads + 4 * sizes.adapter
    trained = own + (b * sizes.base if mode == "full" else 0)
    ddp_buckets = 2 if strategy == "ddp" and n > 1 else 1
    terms = [
        Term(
            "base weights",
            base_bytes,
            f"{sizes.base:,} x {b} B"
            + (" (4/8-bit linear layers)" if cfg.backbone.lora.load_in_bits and mode == "lora" else "")
            + (
                f", / {shard_weights} processes"
                if mode != "frozen" and shard_weights > 1
                else f", layers / {n} processes, embedding and lm_head whole"
                if frozen_sharded and n > 1
                else ", whole in every process"
            ),
            "--accelerate-config deepspeed-zero3 shards a frozen base's layers; or a smaller model.dtype, or (LoRA) lora.load_in_bits 4",
        ),
        Term(
            "trained weights",
            own // shard_weights,
            f"heads {sizes.heads:,} x {b} B"
            + (f", adapter {sizes.adapter:,} x 4 B" if sizes.adapter else "")
            + (f" / {shard_weights}" if shard_weights > 1 else ""),
            "--accelerate-config deepspeed-zero3 or fsdp shards them",
        ),
        Term(
            "gradients",
            ddp_buckets * trained // shard_grads,
            f"one per trained weight{' x 2 (DDP buckets)' if ddp_buckets > 1 else ''}" + (f" / {shard_grads}" if shard_grads > 1 else ""),
            "--accelerate-config deepspeed-zero2 shards them",
        ),
        Term(
            "optimizer state",
            2 * trained // shard_moments,
            "AdamW: two moments per trained weight" + (f" / {shard_moments}" if shard_moments > 1 else ""),
            "--accelerate-config deepspeed-zero2 shards it",
        ),
    ]
    if frozen_sharded and n > 1 and not recipe.data.feature_cache.path:
        layer = (sizes.base - sizes.base_outside_layers) // config.num_hidden_layers
        terms.append(Term("gathered layers", 2 * layer * b, f"the running layer and the next, whole: 2 x {layer:,} x {b} B", "-"))
    if mode == "full" and cfg.backbone.objective == "kl" and cfg.backbone.teacher == "model":
        terms.append(
            Term("reference copy", sizes.base * b, "the original model, frozen, for the KL objective", "train.backbone.teacher: cache")
        )
    terms += _activation_terms(recipe, launch, config, sizes, b)
    return terms


def _base_weight_bytes(recipe: Recipe, config, params: int, b: int) -> int:
    """The base's weights in memory: its dtype, or 4/8-bit linear layers under QLoRA."""
    bits = recipe.train.backbone.lora.load_in_bits if recipe.train.backbone.mode == "lora" else None
    if not bits:
        return params * b
    embeddings = 2 * config.vocab_size * config.hidden_size  # input and output embeddings stay in the dtype
    per_weight = {4: 0.52, 8: 1.01}[bits]  # bitsandbytes: NF4 plus its double-quantised block scales; int8 plus row scales
    return int((params - embeddings) * per_weight) + embeddings * b


def _activation_terms(recipe: Recipe, launch: Launch, config, sizes: Sizes, b: int) -> list[Term]:
    """Features, backbone and head activations, logits and the runtime, per process."""
    cfg, data = recipe.train, recipe.data
    from draftheads.data.features import training_layers

    layers = len(training_layers(recipe.heads))
    terms = [
        Term(
            "features",
            layers * sizes.rows * config.hidden_size * b,
            f"{layers} layer(s) x {sizes.rows:,} tokens x {config.hidden_size}",
            "a smaller train.batch_size or data.max_length",
        )
    ]
    if cfg.backbone.trains:
        saved = sizes.backbone_saved
        if cfg.backbone.gradient_checkpointing:  # layer inputs kept, one layer's activations at a time
            layers_n = config.num_hidden_layers
            saved = sizes.rows * config.hidden_size * b * layers_n + saved // layers_n
        terms.append(Term("backbone activations", saved, "saved for backward in the backbone's forward (measured on the meta device)",
                          "train.backbone.gradient_checkpointing: true, or a smaller train.batch_size"))
    elif not data.feature_cache.path:
        transient = sizes.rows * (2 * config.intermediate_size + 4 * config.hidden_size) * b
        terms.append(
            Term("backbone forward", transient, "one layer's working set (no gradient)", "data.feature_cache (features from disk)")
        )
    terms.append(Term("head activations", sizes.heads_saved, "saved for backward in the heads' forward (measured on the meta device)",
                      "a smaller train.batch_size or data.max_length, or fewer heads.num_heads"))
    vocab = recipe.heads.draft_vocab_size or config.vocab_size
    depths = recipe.heads.trained_depths()
    alive = 1 if sizes.rows > cfg.loss.chunk_size else depths  # one chunk at a time when recomputed
    chunk = min(sizes.rows, cfg.loss.chunk_size)
    copies = 3 if cfg.loss.soft_label_weight > 0 else 2  # logits and log-probs, and the teacher's for soft labels
    terms.append(
        Term(
            "logits",
            alive * chunk * vocab * 4 * copies,
            f"{alive} x {chunk:,} positions x {vocab:,} words x {copies} fp32 copies",
            "a smaller train.loss.chunk_size, or heads.draft_vocab_size",
        )
    )
    terms.append(Term("framework", FRAMEWORK_BYTES[launch.device], f"the {launch.device} runtime itself", "-"))
    return terms


def _flops_per_token(recipe: Recipe, config, heads_flops: float, backbone_flops: float, rows: int) -> float:
    """Training FLOPs per token: the heads forward and backward (3x their forward) with their
    projections (recomputed once in backward when a depth needs several chunks; the teacher's too
    for soft labels), and the backbone's forward (online), or its forward and backward (trained;
    plus the original's forward for KL)."""
    cfg, mode = recipe.train, recipe.train.backbone.mode
    vocab = recipe.heads.draft_vocab_size or config.vocab_size
    projection = 2 * config.hidden_size * vocab * recipe.heads.trained_depths()
    recompute = projection if rows > cfg.loss.chunk_size else 0
    total = 3 * heads_flops + 3 * projection + recompute + (projection if cfg.loss.soft_label_weight > 0 else 0)
    if mode == "frozen":
        return total + (0 if recipe.data.feature_cache.path else backbone_flops)
    teacher = backbone_flops if cfg.backbone.objective == "kl" and cfg.backbone.teacher == "model" else 0
    return total + 3 * backbone_flops + teacher


def _cache_bytes_per_token(recipe: Recipe, config) -> int:
    """Disk per token of this recipe's hidden-state cache (data/features.py's own count)."""
    from draftheads.data.features import CacheIdentity, bytes_per_token, training_layers

    cache = recipe.data.feature_cache
    identity = CacheIdentity(
        recipe.model.base, config.hidden_size, config.vocab_size, "", "", training_layers(recipe.heads), cache.dtype, cache.teacher_topk
    )
    return bytes_per_token(identity)


def _data_tokens(recipe: Recipe) -> int | None:
    """Tokens of the recipe's data as training reads them (None: a source or the tokenizer is not on
    this machine)."""
    if not all(source.path.startswith("demo:") or Path(source.path).exists() for source in recipe.data.sources):
        return None
    from draftheads.data.dataset import build_datasets
    from draftheads.models.backbone import load_tokenizer
    from draftheads.utils.errors import ModelLoadError

    try:
        tokenizer = load_tokenizer(recipe.model.base, recipe.model.revision)
    except (ModelLoadError, OSError):
        return None
    train, held, _, _ = build_datasets(recipe.data, tokenizer, progress=False)
    return sum(len(row.input_ids) for row in (*train.rows, *held.rows))


def plan_lines(plan: Plan, tflops: float) -> list[str]:
    """The plan as printed."""
    launch = plan.launch
    lines = [f"{plan.recipe}: {launch.processes} process(es), {launch.strategy}, {launch.device}",
             f"parameters: base {plan.base_parameters:,}, heads {plan.head_parameters:,}, trained {plan.trainable_parameters:,}",
             "memory per process:"]
    lines += [f"  {term.name:<22} {term.bytes / GIB:8.2f} GiB  {term.how}" for term in plan.memory]
    limit = f" of {launch.memory_gb:g} GiB" if launch.memory_gb is not None else ""
    lines.append(f"  {'total':<22} {plan.total / GIB:8.2f} GiB{limit}")
    lines.append(f"compute: {plan.flops_per_token / 1e9:.1f} GFLOP per trained token, {plan.tokens_per_step:,} tokens per step")
    if plan.steps:
        seconds = plan.flops_per_token * plan.tokens_per_step * plan.steps / (launch.processes * tflops * 1e12)
        lines.append(
            f"  {plan.steps:,} steps: {plan.flops_per_token * plan.tokens_per_step * plan.steps:.3g} FLOP, "
            f"about {seconds / 3600:.1f} h at {tflops:g} TFLOP/s per GPU"
        )
    if plan.cache_bytes_per_token is not None:
        data = (
            f", {plan.cache_bytes_per_token * plan.data_tokens / GIB:.2f} GiB for the recipe's {plan.data_tokens:,} tokens"
            if plan.data_tokens
            else ""
        )
        lines.append(
            f"hidden-state cache: {plan.cache_bytes_per_token:,} B per token "
            f"({plan.cache_bytes_per_token * 1e8 / GIB:.1f} GiB per 100M tokens){data}"
        )
    return lines
