"""The training loop: one plain accelerate loop for every head family and backbone mode.

With a frozen backbone (Medusa-1) it runs in eval mode under no_grad: no activations are kept for
it; with a hidden-state cache (`data.feature_cache.path`) it does not run at all and features come
from disk. accelerate prepares what trains (`TrainModule`: the heads, plus the backbone or its
LoRA adapter in joint training), so DDP/DeepSpeed synchronise and checkpoint only that; under
ZeRO-3 or FSDP a frozen backbone's layers are prepared too, so that they are sharded; ZeRO-3
leaves them out of checkpoints and exports (FSDP's full state dict still gathers them: unmeasured,
it runs on GPUs only). Joint training (Medusa-2) adds L_backbone (KL to the original model,
or LM loss) and weighs the heads' losses by λ0, optionally after a heads-only stage. Each depth's
loss is divided by the number of its trained tokens in the whole optimizer step (all micro-batches,
all processes), so a run on 2 processes computes the same update as a run on 1 process with twice
the gradient accumulation.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from draftheads.data.collate import Collator
from draftheads.decoding.planning.search import expected_tau
from draftheads.decoding.planning.stats import RankStats, calibration_json
from draftheads.decoding.planning.walks import AnswerWalk, kept_walks
from draftheads.decoding.tree import LOOKUP_NGRAM
from draftheads.data.dataset import build_datasets
from draftheads.data.features import cached_dropped, open_feature_cache, training_layers
from draftheads.data.sources import dropped_note
from draftheads.data.vocab import choose_draft_vocabulary, count_targets
from draftheads.train.drift import drift_counts, drift_summary
from draftheads.models.backbone import LAST, Backbone, load_backbone, resolve_location
from draftheads.models.card import model_card
from draftheads.models.draft_model import DraftModel, save_heads
from draftheads.models.heads.base import DraftHeads
from draftheads.models.heads_folder import CALIBRATION_NAME, CARD_NAME, RECIPE_NAME, TRAINING_NAME
from draftheads.models.registry import HEADS
from draftheads.train.checkpoint import (
    TrainerState, checkpoint_trained_only, list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
)
from draftheads.train.config import LossConfig, Recipe, recipe_yaml, save_resolved
from draftheads.train.joint import (
    FrozenBackbone, TrainableBackbone, batch_features, gather_one_layer_ahead, quantization_config, whole_last_layer, whole_outside_layers
)
from draftheads.train.losses import (
    answer_walks, backbone_loss_sum, decode_positions, depth_accuracy_counts, depth_loss_sums, depth_weights, joint_ranks, target_counts
)
from draftheads.train.schedules import make_scheduler
from draftheads.utils.errors import ConfigError, DraftheadsError
from draftheads.utils.jsonl import read_lines
from draftheads.utils.typed_config import to_dict


@dataclass
class StepSpec:
    """What one training forward computes, beyond the batch (passed explicitly, not stored on modules)."""

    backbone: Backbone
    layers: list[int]
    loss: LossConfig
    role: FrozenBackbone | TrainableBackbone
    """What the backbone does in this run (it trains with Medusa-2)."""
    joint: bool = False
    """Joint stage: the backbone's graph is kept and L_backbone is added (false in the heads-only stage)."""


class TrainModule(nn.Module):
    """What accelerate prepares: the heads, and the backbone when it trains (or a frozen backbone's
    layers when the launch shards parameters). Every loss term is computed inside forward so that
    DDP and DeepSpeed see each trainable parameter used in the wrapped call, and sharded parameters
    are gathered there. Returns {"heads": per-depth sums, "aux": mean or None, "backbone": sum or
    None}, or what `measure` returns (evaluation)."""

    def __init__(self, heads: DraftHeads, backbone: nn.Module | None = None):
        super().__init__()
        self.heads = heads
        self.backbone = backbone

    def forward(self, batch: dict, features: dict | None, spec: StepSpec, measure: Callable[[dict], tuple] | None = None) -> dict | tuple:
        ids, positions = batch["input_ids"], batch.get("position_ids")
        if features is None:  # the backbone trains or is sharded: its features are computed here, with the graph in the joint stage
            with torch.set_grad_enabled(spec.joint):
                features = spec.backbone.features(ids, batch.get("attention_mask"), positions, spec.layers).features
        if measure is not None:  # evaluation: inside the wrapped call, where FSDP gathers the parameters it shards
            return measure(features)
        lm_head = spec.backbone.lm_head
        output = self.heads(features, ids, positions)
        loss = spec.loss
        sums = depth_loss_sums(
            self.heads, output, batch, features[LAST], lm_head, loss.soft_label_weight, loss.chunk_size, loss.feature_weight
        )
        terms = {"heads": sums, "aux": sum(output.aux_losses.values()) if output.aux_losses else None, "backbone": None}
        if spec.joint:
            cfg = spec.role.cfg
            teacher = spec.role.original_hidden(batch) if cfg.objective == "kl" and cfg.teacher == "model" else None
            terms["backbone"] = backbone_loss_sum(
                features[LAST], batch, lm_head, cfg.objective, teacher, spec.role.original_lm_head(), loss.chunk_size
            )
        return terms


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    heads_dir: Path
    main_process: bool = True
    """Whether this is the main process (the one that reports and exports)."""
    evals: list[dict] = field(default_factory=list)
    """Held-out metrics of the evaluations this invocation ran."""
    history: list[dict] = field(default_factory=list)
    """Held-out metrics of the whole run, across resumes (main process; the first is at step 0)."""
    losses: list[float] = field(default_factory=list)
    """Training loss at every step."""
    calibration: RankStats | None = None
    """Joint rank-path statistics of the last held-out evaluation (saved as calibration.json)."""

    def summary_lines(self) -> list[str]:
        """Held-out accuracy before and after, for the user (empty without held-out data)."""
        if not self.history:
            return []
        first, final = self.history[0], self.history[-1]
        lines = ["held-out top-1 accuracy by head (before -> after training):"]
        for k, (a, b) in enumerate(zip(first["top1"], final["top1"])):
            lines.append(f"  head {k + 1}: {a:.3f} -> {b:.3f}   (top-5 {final['top5'][k]:.3f})")
        return lines


def make_accelerator(recipe: Recipe):
    """An Accelerator for this recipe: gloo on CPU (DDP and DeepSpeed), bf16 where it is native."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    cfg = recipe.train
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # On CPU, DDP and DeepSpeed need gloo; but a backend given to a lone process makes accelerate
    # look for a process group that does not exist, so only when launched with several.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    if cfg.backbone.trains and cfg.backbone.heads_only_steps:
        # In the heads-only stage the backbone's parameters get no gradient; DDP must expect that.
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=list(cfg.trackers) or None,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        kwargs_handlers=handlers,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def shards_parameters(accelerator) -> bool:
    """Whether the launch shards parameters across processes (DeepSpeed ZeRO-3, FSDP)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP or _zero3(accelerator)


def _refuse_under_zero3(cfg, heads) -> None:
    """What joint training cannot do while no process holds the whole backbone."""
    if cfg.trains and heads.draft_vocab_size:
        raise ConfigError(
            f"heads.draft_vocab_size: {heads.draft_vocab_size} reads rows of the lm_head directly, which ZeRO-3 partitions with a trained "
            "backbone: set it to 0 (the full vocabulary) or launch with deepspeed-zero2"
        )
    if cfg.mode == "lora" and cfg.merge_adapter:
        raise ConfigError("train.backbone.merge_adapter: merging needs the whole base in one process, which ZeRO-3 never holds: "
                          "set it to false (the adapter is saved) or launch with deepspeed-zero2")
    if cfg.mode == "full" and cfg.objective == "kl" and cfg.teacher == "model":
        raise ConfigError("train.backbone.teacher: model keeps a whole frozen copy of the backbone, which ZeRO-3 does not shard: "
                          "use teacher: cache (a hidden-state cache with teacher_topk > 0) or launch with deepspeed-zero2")


def _zero3(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3


def _batches(loader, state: TrainerState, accelerator) -> Iterator[dict]:
    """Micro-batches forever, epoch after epoch, starting at the state's saved data position."""
    while True:
        loader.set_epoch(state.epoch)
        source = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in source:
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


def evaluate(
    heads: DraftHeads, backbone: Backbone, loader, accelerator, max_batches: int | None, chunk_size: int,
    trainable: TrainableBackbone | None = None, inside: Callable[[dict, Callable], tuple] | None = None, walks_ngram: int | None = None,
) -> tuple[dict, RankStats]:
    """Held-out per-depth top-1/top-5 accuracy, cross-entropy and draft-vocabulary coverage, summed
    over all processes; with a trained backbone whose original can run, also its drift (agreement,
    both perplexities). Also the joint rank-path statistics of every drafted depth, which calibrate
    trees (`RankStats`). `inside(batch, measure)` runs a batch's measurement within the prepared
    module's forward (where a sharded module's parameters are gathered); without it, here. With
    `walks_ngram`, the statistics keep every held-out answer as a walk too (`answer_walks`), so the
    heads' calibration replays decodes with a lookup branch of that n-gram."""
    heads.eval()
    if trainable is not None:
        trainable.module.eval()
    from accelerate.utils import gather_object

    layers = training_layers(heads.config)
    measure_drift = trainable is not None and trainable.has_original
    counts = torch.zeros(heads.config.trained_depths(), 5, dtype=torch.float64)
    drift = torch.zeros(4, dtype=torch.float64)
    ranks, located, walks = [], [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break

            def measure(features: dict[int, torch.Tensor], batch=batch) -> tuple:
                return _measure_batch(heads, backbone, batch, features, chunk_size, trainable if measure_drift else None, walks_ngram)

            found = inside(batch, measure) if inside is not None else measure(batch_features(backbone, batch, layers))
            counts += found[0].cpu()
            ranks.append(found[1].cpu())
            located.append(found[2].cpu())
            drift += found[3].cpu()
            walks += found[4]
    counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    # ranks and their (turn, offset) side by side: one gather keeps them aligned across processes
    local = torch.cat([torch.cat(ranks), torch.cat(located)], 1) if ranks else torch.zeros(0, heads.config.num_heads + 2, dtype=torch.long)
    gathered = torch.cat(gather_object([local]) if accelerator.num_processes > 1 else [local])
    heads.train()
    targets = counts[:, 0].clamp(min=1)
    metrics = {
        "top1": (counts[:, 1] / targets).tolist(),
        "top5": (counts[:, 2] / targets).tolist(),
        "loss": (counts[:, 3] / counts[:, 4].clamp(min=1)).tolist(),
        "targets": counts[:, 0].tolist(),
        "coverage": (counts[:, 4] / targets).tolist(),
    }
    if measure_drift:
        metrics["drift"] = drift_summary(accelerator.reduce(drift.to(accelerator.device), "sum").cpu())
    stats = RankStats.located(gathered[:, :-2], gathered[:, -2], gathered[:, -1])
    if walks_ngram is not None:
        stats.walks, stats.lookup_ngram = kept_walks(gather_object(walks) if accelerator.num_processes > 1 else walks), walks_ngram
    return metrics, stats


def _measure_batch(
    heads: DraftHeads,
    backbone: Backbone,
    batch: dict,
    features: dict[int, torch.Tensor],
    chunk_size: int,
    trainable: TrainableBackbone | None,
    walks_ngram: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[AnswerWalk]]:
    """One held-out batch: (accuracy counts per depth, joint ranks of every drafted depth, their
    (turn, offset), drift counts: zeros without `trainable`, its answers' walks: with `walks_ngram`)."""
    output = heads(features, batch["input_ids"], batch.get("position_ids"))
    counts = depth_accuracy_counts(heads, output, batch, backbone.lm_head, chunk_size)
    drafted = output.states
    if len(drafted) < heads.config.num_heads:  # ranks of every depth the heads draft, trained or not
        drafted = heads(features, batch["input_ids"], batch.get("position_ids"), depths=heads.config.num_heads).states
    rows, cols, turn, offset = decode_positions(batch, len(drafted))
    ranks = joint_ranks(heads, drafted, batch, backbone.lm_head, rows, cols)
    drift = torch.zeros(4, dtype=torch.float64)
    if trainable is not None:
        drift = drift_counts(
            features[LAST], trainable.original_hidden(batch), batch, backbone.lm_head, trainable.original_lm_head(), chunk_size
        )
    walks = answer_walks(heads, drafted, batch, backbone.lm_head, walks_ngram) if walks_ngram is not None else []
    return counts, ranks, torch.stack([turn, offset], 1), drift, walks


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


@dataclass
class _Run:
    """Everything a training run has set up; the loop's parts read it."""

    recipe: Recipe
    accelerator: object
    backbone: Backbone
    role: FrozenBackbone | TrainableBackbone
    module: nn.Module
    heads: DraftHeads
    """The unwrapped heads (what evaluation and export use)."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: object
    eval_loader: object | None
    state: TrainerState
    frozen: object
    layers: list[int]
    sizes: tuple[int, int]
    """(train rows, held-out rows)."""
    dropped: dict
    result: TrainResult

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.train.output_dir)


def train(recipe: Recipe, on_step: Callable[[int], None] | None = None, progress: bool = True) -> TrainResult:
    """Train the recipe's heads; resumable; returns where the heads were exported.

    `on_step(step)` is called after each optimizer step (and its checkpoint, if any).
    """
    run = _set_up(recipe, progress)
    cfg, state, accelerator = recipe.train, run.state, run.accelerator
    if state.step == 0:
        if accelerator.is_main_process:
            (run.output_dir / "metrics.jsonl").unlink(missing_ok=True)  # from a run that died before its first checkpoint
        _evaluate_and_log(run, 0)
    data = _batches(run.train_loader, state, accelerator)
    bar = tqdm(
        total=cfg.max_steps, initial=state.step, desc="training", unit="step", disable=not (progress and accelerator.is_main_process)
    )
    tokens_seen, started = 0, time.perf_counter()
    while state.step < cfg.max_steps:
        step_started = time.perf_counter()
        step_loss, shown, logged, tokens = _optimizer_step(run, data)
        state.seconds += time.perf_counter() - step_started
        tokens_seen += tokens
        run.result.losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(shown)
        if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
            logged["train/tokens_per_s"] = tokens_seen * accelerator.num_processes / max(time.perf_counter() - started, 1e-9)
            accelerator.log(logged, step=state.step)
        if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
            _evaluate_and_log(run, state.step, final=state.step == cfg.max_steps)
        if state.step % cfg.save_every == 0 or state.step == cfg.max_steps:
            save_checkpoint(accelerator, run.output_dir, state.step, cfg.keep_checkpoints, run.frozen)
        if on_step is not None:
            on_step(state.step)
    bar.close()
    if not run.result.evals:
        _evaluate_and_log(run, state.step, final=True)  # resumed at the end already: still report where the heads stand
    _export(run)
    return run.result


def _set_up(recipe: Recipe, progress: bool) -> _Run:
    """Checks, the backbone, the data, the heads (with their draft vocabulary), the optimizer and
    what accelerate prepares; resumes from a checkpoint when asked."""
    from accelerate.utils import set_seed

    cfg, joint_cfg = recipe.train, recipe.train.backbone
    heads_cfg = HEADS.required(recipe.heads, "training")
    problems = heads_cfg.training_problems()
    if problems:
        raise ConfigError("; ".join(f"heads.{problem}" for problem in problems))
    if joint_cfg.trains and joint_cfg.objective == "kl" and joint_cfg.teacher == "cache" and not recipe.data.feature_cache.path:
        raise ConfigError("train.backbone.teacher: cache needs data.feature_cache.path (a cache built with teacher_topk > 0)")
    accelerator = make_accelerator(recipe)
    set_seed(cfg.seed)
    zero3 = _zero3(accelerator)
    if zero3:
        _refuse_under_zero3(joint_cfg, heads_cfg)
    backbone = _load_base(recipe, accelerator, zero3)
    if heads_cfg.draft_vocab_size > backbone.vocab_size:
        raise ConfigError(
            f"heads.draft_vocab_size: {heads_cfg.draft_vocab_size} exceeds the vocabulary of "
            f"{recipe.model.base} ({backbone.vocab_size} tokens)"
        )
    train_set, held_set, dropped = _datasets(recipe, backbone, accelerator, progress)
    with whole_last_layer(backbone) if zero3 else nullcontext():  # heads may start from a copy of it
        heads = _new_heads(recipe, backbone, train_set, accelerator.print)
    role = (
        TrainableBackbone(backbone, joint_cfg)
        if joint_cfg.trains
        else FrozenBackbone(backbone, shards_parameters(accelerator) and not recipe.data.feature_cache.path)
    )
    if not joint_cfg.trains and role.sharded and zero3:
        gather_one_layer_ahead(accelerator, backbone.layers)
    groups = [{"params": list(heads.parameters()), "lr": cfg.lr * joint_cfg.heads_lr_multiplier}] + role.param_groups(cfg.lr)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # Not prepared: accelerate would step a prepared scheduler once per process.
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.min_lr_ratio, joint_cfg.heads_only_steps)
    collate = Collator(pad_token_id=backbone.tokenizer.pad_token_id or 0)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    module, optimizer, train_loader = accelerator.prepare(TrainModule(heads, role.module), optimizer, train_loader)
    eval_loader = held_out_loader(held_set, recipe, backbone, accelerator)
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state)
    frozen = checkpoint_trained_only(accelerator, module)
    _resume(accelerator, module, cfg, frozen, state)
    if accelerator.is_main_process and cfg.trackers:
        accelerator.init_trackers("draftheads", config=_flat("", to_dict(recipe), {}))
    result = TrainResult(
        output_dir=Path(cfg.output_dir), heads_dir=Path(cfg.output_dir) / "heads", main_process=accelerator.is_main_process
    )
    return _Run(
        recipe, accelerator, backbone, role, module, accelerator.unwrap_model(module).heads, optimizer, scheduler, train_loader,
        eval_loader, state, frozen, training_layers(heads_cfg), (len(train_set), len(held_set)), dropped, result,
    )


def _load_base(recipe: Recipe, accelerator, zero3: bool) -> Backbone:
    """The frozen base on every process. The first process converts or downloads it and the others
    then read its cache; under ZeRO-3 all load at once instead (the weights are partitioned as they
    load, a collective) and the parts outside the layers are made whole."""
    def load() -> Backbone:
        return load_backbone(recipe.model, device=accelerator.device, quantization_config=quantization_config(recipe.train.backbone))

    with accelerator.main_process_first():
        resolve_location(recipe.model.base, recipe.model.revision)
        backbone = None if zero3 else load()
    if zero3:
        backbone = load()
        whole_outside_layers(backbone)
    backbone.model.requires_grad_(False)
    return backbone


def held_out_loader(held_set, recipe: Recipe, backbone: Backbone, accelerator):
    """The prepared loader evaluation reads (None without held-out rows)."""
    if not len(held_set):
        return None
    collate = Collator(pad_token_id=backbone.tokenizer.pad_token_id or 0)
    return accelerator.prepare(torch.utils.data.DataLoader(held_set, batch_size=recipe.train.batch_size, collate_fn=collate))


def _datasets(recipe: Recipe, backbone: Backbone, accelerator, progress: bool):
    """(train set, held-out set, records dropped per source and reason); the resolved recipe and
    the data statistics are written/printed by the main process."""
    with accelerator.main_process_first():
        if recipe.data.feature_cache.path:
            train_set, held_set, stat_lines = open_feature_cache(recipe, backbone)
            dropped = cached_dropped(recipe)
        else:
            train_set, held_set, stats, _ = build_datasets(
                recipe.data, backbone.tokenizer, recipe.model.base, progress and accelerator.is_main_process
            )
            stat_lines, dropped = stats.lines(), stats.dropped()
    if accelerator.is_main_process:
        save_resolved(recipe, recipe.train.output_dir)
        for line in stat_lines:
            accelerator.print(f"data: {line}")
    return train_set, held_set, dropped


def _new_heads(recipe: Recipe, backbone: Backbone, train_set, log: Callable[[str], None]) -> DraftHeads:
    """Fresh heads in train mode, their draft vocabulary chosen from the training targets."""
    draft = DraftModel.new(backbone, recipe.heads)
    if recipe.heads.draft_vocab_size:
        vocabulary = choose_draft_vocabulary(count_targets(train_set, backbone.vocab_size), recipe.heads.draft_vocab_size)
        draft.heads.use_draft_vocab(vocabulary.tokens, backbone.lm_head)
        log(f"data: {vocabulary.summary()}")
    return draft.heads.train()


def _resume(accelerator, module, cfg, frozen, state: TrainerState) -> None:
    """Continue from the checkpoint `train.resume_from` names; refuse to mix with another run's."""
    output_dir = Path(cfg.output_dir)
    resume = resolve_resume(output_dir, cfg.resume_from)
    if resume is None and list_checkpoints(output_dir):
        raise ConfigError(
            f"train.output_dir: {output_dir} already holds checkpoints of another run: set train.resume_from=latest "
            "to continue it, or choose a new output_dir"
        )
    if resume is not None:
        load_checkpoint(accelerator, module, resume, frozen)
        accelerator.print(f"resumed from {resume} at step {state.step}")


def _optimizer_step(run: _Run, data: Iterator[dict]) -> tuple[float, dict, dict, int]:
    """One optimizer step over `grad_accum` micro-batches: (its loss summed over processes, the
    progress-bar fields, the tracker values, tokens this process read)."""
    cfg, accelerator, role = run.recipe.train, run.accelerator, run.role
    joint, head_weight = role.begin_step(run.state.step)
    spec = StepSpec(run.backbone, run.layers, cfg.loss, role, joint)
    depths = run.recipe.heads.trained_depths()
    weights, world = depth_weights(depths, cfg.loss.decay), accelerator.num_processes
    micro = [next(data) for _ in range(cfg.grad_accum)]
    counts = accelerator.reduce(sum(target_counts(b, depths, with_next_token=True) for b in micro).to(accelerator.device), "sum")
    step_loss = torch.zeros((), device=accelerator.device)
    step_backbone = torch.zeros((), device=accelerator.device)
    for batch in micro:
        with accelerator.accumulate(run.module):
            terms = run.module(batch, role.features(batch, run.layers), spec)
            loss = head_weight * sum(w * s / counts[k + 1].clamp(min=1) for k, (w, s) in enumerate(zip(weights, terms["heads"])))
            if terms["aux"] is not None:
                loss = loss + head_weight * terms["aux"] / cfg.grad_accum / world  # auxiliary terms are per-micro-batch means
            if terms["backbone"] is not None:
                backbone_loss = terms["backbone"] / counts[0].clamp(min=1)
                step_backbone += backbone_loss.detach()
                loss = loss + backbone_loss
            step_loss += loss.detach()
            # accelerate divides by grad_accum and DDP/DeepSpeed average over processes; the loss
            # is already normalised by the step's global token counts, so undo both.
            accelerator.backward(loss * cfg.grad_accum * world)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(run.module.parameters(), cfg.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad()
    run.scheduler.step()
    run.state.step += 1
    run.state.target_tokens += int(counts[1].item())
    step_loss = accelerator.reduce(step_loss, "sum").item()
    if not math.isfinite(step_loss):
        raise DraftheadsError(
            f"the training loss is {step_loss} at step {run.state.step}: lower train.lr or set train.max_grad_norm; "
            f"checkpoints so far are in {run.output_dir / 'checkpoints'}"
        )
    lrs = run.scheduler.get_last_lr()
    shown, logged = role.progress(accelerator.reduce(step_backbone, "sum").item(), head_weight, lrs)
    return (
        step_loss,
        {"loss": f"{step_loss:.3f}", "lr": f"{lrs[0]:.2e}", **shown},
        {"train/loss": step_loss, "train/lr": lrs[0], **logged},
        sum(int(b["input_ids"].numel()) for b in micro),
    )


def _evaluate_and_log(run: _Run, step: int, final: bool = False) -> None:
    """Held-out metrics at `step`: printed, logged to the trackers, appended to metrics.jsonl; the
    rank statistics kept for calibration.json (the `final` evaluation's with the answers' walks, so
    `--tree auto` weighs the lookup branch on freshly trained heads)."""
    if run.eval_loader is None:
        return
    accelerator = run.accelerator
    trainable = run.role if run.role.trains else None
    spec = StepSpec(run.backbone, run.layers, run.recipe.train.loss, run.role)

    def inside(batch: dict, measure: Callable) -> tuple:
        return run.module(batch, batch_features(run.backbone, batch, run.layers) if batch.get("features") else None, spec, measure)

    sharded = shards_parameters(accelerator)
    if sharded:  # DeepSpeed keeps its gathering order per mode: evaluation must not overwrite training's
        run.module.eval()
    metrics, stats = evaluate(
        run.heads, run.backbone, run.eval_loader, accelerator, run.recipe.train.eval_batches, run.recipe.train.loss.chunk_size, trainable,
        inside if sharded else None, LOOKUP_NGRAM if final else None,
    )
    if sharded:
        run.module.train()  # the next step's begin_step puts frozen layers back in eval mode
    metrics["step"] = step
    metrics["target_tokens"], metrics["train_seconds"] = run.state.target_tokens, round(run.state.seconds, 1)
    metrics["expected_tau"] = {f"{b}x{w}": expected_tau(stats, b, w) for b, w in ((2, 1), (4, 2), (8, 4), (16, 8))}
    run.result.calibration = stats
    run.result.evals.append(metrics)
    logged = {f"eval/top1_head{k + 1}": v for k, v in enumerate(metrics["top1"])}
    logged |= {f"eval/top5_head{k + 1}": v for k, v in enumerate(metrics["top5"])}
    logged |= {f"eval/expected_tau_{k}": v for k, v in metrics["expected_tau"].items()}
    if "drift" in metrics:
        logged |= {f"eval/{k}": metrics["drift"][k] for k in ("agreement", "perplexity_trained", "perplexity_original")}
    logged["eval/target_tokens"] = run.state.target_tokens
    accelerator.log(logged, step=step)
    for line in _eval_lines(metrics, stats.positions, bool(run.recipe.heads.draft_vocab_size)):
        accelerator.print(line)
    if accelerator.is_main_process:
        with open(run.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")


def _eval_lines(metrics: dict, positions: int, reduced: bool) -> list[str]:
    """What an evaluation prints."""
    step = metrics["step"]

    def row(values):
        return " ".join(f"{v:.3f}" for v in values)

    coverage = f"  draft-vocabulary coverage [{row(metrics['coverage'])}]" if reduced else ""
    lines = [
        f"\nstep {step}: held-out top-1 by head [{row(metrics['top1'])}]  top-5 [{row(metrics['top5'])}]{coverage}",
        f"step {step}: expected τ from held-out rank paths ({positions} positions), dynamic tree budget x width: "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics["expected_tau"].items()),
    ]
    if "drift" in metrics:
        drift = metrics["drift"]
        lines.append(
            f"step {step}: backbone agrees with the original on {drift['agreement']:.2%} of held-out tokens; "
            f"perplexity {drift['perplexity_original']:.3f} (original) -> {drift['perplexity_trained']:.3f} (trained)"
        )
    return lines


def _export(run: _Run) -> None:
    """Write the heads folder (weights, config, card, training.json, recipe, calibration, and a
    trained backbone) from the main process; every process takes part in gathering the weights."""
    accelerator, result, recipe = run.accelerator, run.result, run.recipe
    state_dict = _trained_state_dict(run)
    if accelerator.is_main_process:
        # The whole run's evaluations, including those before a resume (step 0 = untrained heads).
        history = [json.loads(line) for _, line in read_lines(run.output_dir / "metrics.jsonl")] if run.eval_loader else []
        result.history = history
        summary = {
            "steps": run.state.step,
            "data": [s.path for s in recipe.data.sources],
            "train_rows": run.sizes[0],
            "held_out_rows": run.sizes[1],
            "dropped": run.dropped,
            "final_eval": history[-1] if history else None,
            "first_eval": history[0] if history else None,
        }
        section, write_backbone = run.role.summary(state_dict, history)
        if section is not None:
            summary["backbone"] = section
        files = {
            CARD_NAME: model_card(run.heads.config, summary),
            TRAINING_NAME: json.dumps(summary, indent=2) + "\n",
            RECIPE_NAME: recipe_yaml(recipe),
        }
        if result.calibration is not None:
            files[CALIBRATION_NAME] = calibration_json(result.calibration, "held-out rows of the training data")
        heads_state = {k[len("heads.") :]: v for k, v in state_dict.items() if k.startswith("heads.")}
        save_heads(run.heads, result.heads_dir, files, state=heads_state, write_more=write_backbone)
        accelerator.print(f"heads saved to {result.heads_dir}" + (" with the trained backbone" if run.role.trains else ""))
        note = dropped_note(run.dropped)
        if note:
            accelerator.print(f"warning: {note}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _trained_state_dict(run: _Run) -> dict[str, torch.Tensor]:
    """The prepared module's weights, whole, on the main process (every process takes part). Under
    ZeRO-3 the frozen weights are left out (they are the base model's): gathering them would put
    the whole target in one process's memory, which ZeRO-3 was chosen to avoid."""
    if not _zero3(run.accelerator):
        return run.accelerator.get_state_dict(run.module)
    # accelerate's get_state_dict refuses unless the config saves 16-bit weights; this gathers the same way, without casting
    return run.module._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True) or {}
