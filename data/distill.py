"""Self-distillation data: the base model answers the user's prompts itself (`draftheads gen-data`).

Heads trained on the base model's own answers accept far more tokens than heads trained on
someone else's. For each conversation every user turn is answered by the base model, with its own
earlier answers (not the original ones) in the context; original assistant turns are dropped.

Layout of `output_dir`:
- `shards/rank-NNNNN.jsonl`: what each process finished, one record per line, append-only. A
  record is a finished conversation or a skipped one (`{"key":..., "skipped": reason}`).
- `metadata.json`: the settings (model and revision, tokenizer fingerprint, sampling, seed,
  sources), written before generating; a rerun with other settings is refused. Counts are added
  when the run completes.
- `data.jsonl`: every finished conversation in input order (ShareGPT `conversations` of
  from/value), written once every input is accounted for. Training recipes read it directly.

Inputs are answered in chunks of `chunk_size` consecutive inputs (chunk j holds inputs
j*chunk_size ..), and a chunk's requests are batched by a rule of the chunk alone. Padding and batch
shapes change floating-point results, so what an answer is depends on its batch-mates: fixing the
chunks by input order makes them the same in every run. Under `accelerate launch` process r of n
takes the chunks j with j % n == r. A restart redoes, whole, every chunk with an input missing from
all shards (whatever the number of processes was) and appends only the missing records, so after a
`kill -9` the output equals the uninterrupted run's (same settings, same batching, same machine),
with nothing lost and nothing twice. The `openai` backend batches on the server, beyond our rule.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.data.config import DistillConfig
from draftheads.data.generate_hf import GenAnswer, GenRequest
from draftheads.data.sources import Conversation, dropped_by_source, read_sources
from draftheads.decoding.sampling import SamplingConfig
from draftheads.models.backbone import load_backbone, load_tokenizer, resolve_location, tokenizer_fingerprint
from draftheads.utils.append_log import AppendLog, LogBusy, read_records
from draftheads.utils.atomic import atomic_directory, atomic_write_text
from draftheads.utils.errors import ConfigError, DataError
from draftheads.utils.log import logger

SHARDS = "shards"
METADATA = "metadata.json"
OUTPUT = "data.jsonl"
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


class Generator(Protocol):
    """A backend: answers a list of requests, in order."""

    def generate(self, requests: list[GenRequest], on_tokens: Callable[[int], None] | None = None) -> list[GenAnswer]: ...


def record_seed(run_seed: int, key: str, turn: int) -> int:
    """The seed of one answer: a function of the run seed, the record and the turn only."""
    digest = hashlib.sha256(f"{run_seed}|{key}|{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def answer_groups(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """The messages to add before each answer: every user turn is answered, with any system
    message before it; original assistant turns are dropped (prompt-only sources such as MT-bench
    list consecutive user turns, each to be answered in turn)."""
    groups: list[list[dict[str, str]]] = []
    pending: list[dict[str, str]] = []
    for message in messages:
        if message["role"] == "assistant":
            continue
        pending.append(message)
        if message["role"] == "user":
            groups.append(pending)
            pending = []
    return groups


@dataclass
class _Conversation:
    """One conversation being answered turn by turn."""

    conv: Conversation
    groups: list[list[dict[str, str]]]
    messages: list[dict[str, str]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    stopped: str | None = None
    """Why answering ended before the last turn (context limit, server rejection)."""

    @property
    def turn(self) -> int:
        return len(self.finish_reasons)

    @property
    def done(self) -> bool:
        return self.stopped is not None or self.turn == len(self.groups)

    def record(self) -> dict:
        """The finished conversation as a JSON record (or a skip marker if nothing was answered)."""
        if not self.finish_reasons:
            return {"key": self.conv.origin, "id": self.conv.id, "skipped": self.stopped or "no user turn"}
        record = {
            "key": self.conv.origin,
            "id": self.conv.id,
            "conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in self.messages],
            "finish_reasons": self.finish_reasons,
            "answer_tokens": self.tokens,
        }
        if self.conv.category:
            record["category"] = self.conv.category
        if self.stopped:
            record["stopped"] = self.stopped
        return record


@dataclass
class DistillResult:
    """What a `gen-data` invocation did (this process), and the merged counts when complete."""

    output_dir: Path
    complete: bool = False
    """Every input is accounted for and `data.jsonl` is written."""
    generated_records: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    main_process: bool = True

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def settings(recipe, formatter: ChatFormatter, tokenizer, context: int) -> dict:
    """What determines the output: a rerun with different settings must not mix into it."""
    cfg: DistillConfig = recipe.distill
    location = resolve_location(recipe.model.base, recipe.model.revision)
    data = {
        "model": recipe.model.base,
        "revision": recipe.model.revision,
        "origin": location.origin,
        "hub_id": location.hub_id,
        "dtype": recipe.model.dtype,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "chat_template_sha256": hashlib.sha256(formatter.template.encode()).hexdigest()[:16],
        "backend": cfg.backend,
        "sampling": {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p, "top_k": cfg.sampling.top_k},
        "seed": cfg.sampling.seed,
        "max_new_tokens": cfg.max_new_tokens,
        "max_prompt_tokens": cfg.max_prompt_tokens or context - 1,
        "sources": [asdict(s) for s in cfg.sources],
    }
    if cfg.backend == "openai":
        data["server_model"] = cfg.openai.model or recipe.model.base
    else:  # an answer's numerics depend on its batch: a resume with other batching would change them
        data["batching"] = {"chunk_size": cfg.chunk_size, "batch_size": cfg.batch_size, "max_batch_tokens": cfg.max_batch_tokens}
    return data


def _check_or_write_settings(out: Path, current: dict) -> None:
    path = out / METADATA
    if path.exists():
        try:
            saved = json.loads(path.read_text())["settings"]
        except (json.JSONDecodeError, KeyError):
            raise ConfigError(f"{path}: not a gen-data metadata file; choose another distill.output_dir") from None
        # Metadata without batching settings: resume under the batching given (nothing to compare).
        compared = [k for k in current if k in saved or k != "batching"]
        changed = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in compared if _comparable(saved, k) != _comparable(current, k)]
        if changed:
            raise ConfigError(
                f"{out} holds gen-data output made with other settings ({'; '.join(changed)}): rerun with the same "
                "settings to resume it, or choose another distill.output_dir"
            )
        if saved != current:  # only a source's limit changed: record the one this run uses
            atomic_write_text(path, json.dumps({"settings": current}, indent=2) + "\n")
        return
    atomic_write_text(path, json.dumps({"settings": current}, indent=2) + "\n")


def _comparable(settings: dict, key: str):
    """A setting as resuming compares it. A source's `limit` only decides how many of its records are
    answered, and finished answers are keyed by their record, so raising it grows a data set and
    lowering it finishes one early (the merge keeps exactly the records within the new limit)."""
    value = settings.get(key)
    if key == "sources" and isinstance(value, list):
        return [{k: v for k, v in source.items() if k != "limit"} for source in value]
    return value


def done_keys(out: Path) -> dict[str, dict]:
    """Every finished or skipped input found in any shard (first occurrence wins)."""
    found: dict[str, dict] = {}
    for shard in sorted((out / SHARDS).glob("rank-*.jsonl")):
        for record in read_records(shard):
            found.setdefault(record["key"], record)
    return found


def _make_generator(recipe, sampling: SamplingConfig, device):
    """The backend, its tokenizer and the model's context length."""
    cfg: DistillConfig = recipe.distill
    if cfg.backend == "hf":
        from draftheads.data.generate_hf import HFGenerator
        from draftheads.models.backbone import default_eos

        backbone = load_backbone(recipe.model, device=device)
        eos = default_eos(backbone)
        context = int(getattr(backbone.config, "max_position_embeddings", 0) or 1 << 30)
        return HFGenerator(backbone, sampling, cfg.batch_size, eos, cfg.max_batch_tokens), backbone.tokenizer, context
    from draftheads.data.generate_openai import OpenAIGenerator
    from transformers import AutoConfig

    location = resolve_location(recipe.model.base, recipe.model.revision)
    tokenizer = load_tokenizer(recipe.model.base, recipe.model.revision, location)
    try:
        config = AutoConfig.from_pretrained(location.path, revision=location.revision).get_text_config()
        context = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
    except (OSError, ValueError):
        context = 1 << 30  # the server enforces its own limit (rejected requests are counted)
    return OpenAIGenerator(cfg.openai, recipe.model.base, sampling, tokenizer), tokenizer, context


def run_distill(recipe, progress: bool = True) -> DistillResult:
    """Generate (or resume generating) the self-distillation data the recipe describes."""
    from accelerate import PartialState

    cfg: DistillConfig = recipe.distill
    out = Path(cfg.output_dir)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Several CPU processes form a group only with cpu=True (gloo); a long generation leaves ranks
    # finishing far apart, so the final barrier must be willing to wait that long.
    cpu = not _cuda()
    state = (
        PartialState(cpu=cpu, backend="gloo" if cpu else None, timeout=datetime.timedelta(hours=48)) if several else PartialState(cpu=cpu)
    )
    rank, world = state.process_index, state.num_processes
    sampling = cfg.sampling
    generator, tokenizer, context = _make_generator(recipe, sampling, state.device)
    formatter = ChatFormatter(tokenizer, recipe.data.chat_template, recipe.model.base)
    limit = min(cfg.max_prompt_tokens or context - 1, context - 1)

    conversations, reports = read_sources(cfg.sources, require_assistant=False, skip_invalid=cfg.skip_invalid)
    if not conversations:
        raise DataError("no usable prompts in: " + ", ".join(s.path for s in cfg.sources))
    current = settings(recipe, formatter, tokenizer, context)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _check_or_write_settings(out, current)
        for report in reports:
            logger(__name__).info(f"gen-data: {report.summary()}")
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_or_write_settings(out, current)

    done = done_keys(out)
    chunks = [conversations[i : i + cfg.chunk_size] for i in range(0, len(conversations), cfg.chunk_size)][rank::world]
    share = sum(len(chunk) for chunk in chunks)
    result = DistillResult(output_dir=out, main_process=state.is_main_process)
    try:
        writer = AppendLog(out / SHARDS / f"rank-{rank:05d}.jsonl")
    except LogBusy:
        raise ConfigError(f"{out}: another gen-data process is writing this output; wait for it or stop it") from None
    bar = tqdm(total=share, initial=sum(c.origin in done for chunk in chunks for c in chunk),
               desc=f"gen-data{f' [{rank}/{world}]' if world > 1 else ''}", unit="conv", disable=not progress, mininterval=1.0)
    started = time.perf_counter()
    shown = [0]

    def show_tokens(count: int) -> None:
        shown[0] += count
        result.generated_tokens += count
        bar.set_postfix_str(f"{shown[0] / max(time.perf_counter() - started, 1e-9):.1f} tok/s")

    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes else None
    try:
        for chunk in chunks:
            if all(c.origin in done for c in chunk):
                continue
            if deadline is not None and time.perf_counter() >= deadline:
                break  # past the time budget no chunk is begun; the one in flight was finished
            for record in answer_chunk(chunk, generator, formatter, cfg, limit, context, show_tokens):
                if record["key"] not in done:  # a redone chunk's earlier records are already written
                    writer.append(record)
                    result.generated_records += 1
                    bar.update(1)
    finally:
        writer.close()
        bar.close()
        result.seconds = time.perf_counter() - started
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    state.wait_for_everyone()
    if state.is_main_process:
        result.counts, result.complete = merge_output(out, conversations, reports, cfg.export_dataset, budgeted=deadline is not None)
    state.wait_for_everyone()
    if not state.is_main_process:
        result.complete = (out / OUTPUT).exists()
    return result


def answer_chunk(chunk: list[Conversation], generator: Generator, formatter: ChatFormatter, cfg: DistillConfig,
                 limit: int, context: int, on_tokens: Callable[[int], None]) -> Iterator[dict]:
    """Answer every conversation of a chunk, turn by turn: each round asks the next turn of every
    conversation still open, so the batches are a function of the chunk alone. Yields each
    conversation's record as soon as it is finished."""
    active = [_Conversation(conv, answer_groups(conv.messages)) for conv in chunk]
    while active:
        for conv in active:
            if conv.done:
                yield conv.record()
        active = [conv for conv in active if not conv.done]
        requests, asked = [], []
        for conv in active:
            request = _next_request(conv, formatter, cfg, limit, context)  # None: it stopped (done next round)
            if request is not None:
                requests.append(request)
                asked.append(conv)
        for conv, answer in zip(asked, generator.generate(requests, on_tokens) if requests else []):
            if answer.finish_reason.startswith("rejected"):
                conv.stopped = answer.finish_reason
                continue
            conv.messages.append({"role": "assistant", "content": answer.text})
            conv.finish_reasons.append(answer.finish_reason)
            conv.tokens.append(answer.tokens)


def _next_request(conv: _Conversation, formatter: ChatFormatter, cfg: DistillConfig, limit: int, context: int) -> GenRequest | None:
    """The request for the conversation's next turn, or None (and `stopped` set) if it does not fit."""
    messages = conv.messages + conv.groups[conv.turn]
    try:
        prompt_ids = formatter.prompt_ids(messages, origin=conv.conv.origin)
    except DataError as exc:
        conv.stopped = f"chat template cannot render: {exc}"
        return None
    if len(prompt_ids) > limit:
        conv.stopped = f"prompt longer than {limit} tokens"
        return None
    conv.messages = messages
    return GenRequest(
        messages=messages,
        prompt_ids=prompt_ids,
        max_new_tokens=min(cfg.max_new_tokens, context - len(prompt_ids)),
        seed=record_seed(cfg.sampling.seed, conv.conv.origin, conv.turn),
    )


def merge_output(out: Path, conversations: list[Conversation], reports, export_dataset: bool, budgeted: bool = False) -> tuple[dict, bool]:
    """Write `data.jsonl` (input order) and the counts, once every input is in some shard; under a
    time budget, from every input answered so far (the others are counted as `not_reached`)."""
    done = done_keys(out)
    inputs, not_reached = len(conversations), 0
    if budgeted:
        conversations = [c for c in conversations if c.origin in done]
        not_reached = inputs - len(conversations)
    missing = [c.origin for c in conversations if c.origin not in done]
    records = [done[c.origin] for c in conversations if c.origin in done]
    kept = [r for r in records if "skipped" not in r]
    skipped: dict[str, int] = {}
    for r in records:
        if "skipped" in r:
            reason = r["skipped"].split(":")[0] if r["skipped"].startswith("chat template") else r["skipped"]
            skipped[reason] = skipped.get(reason, 0) + 1
    reasons: dict[str, int] = {}
    for r in kept:
        for reason in r["finish_reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
    counts = {
        "inputs": inputs,
        "conversations": len(kept),
        "answers": sum(len(r["finish_reasons"]) for r in kept),
        "answer_tokens": sum(sum(r["answer_tokens"]) for r in kept),
        "finish_reasons": reasons,
        "cut_short": sum(1 for r in kept if r.get("stopped")),
        "skipped": skipped,
        "missing": len(missing),
        "not_reached": not_reached,
        "sources": [report.summary() for report in reports],
        "dropped": dropped_by_source(reports),
    }
    metadata = json.loads((out / METADATA).read_text())
    metadata["counts"] = counts
    complete = not missing
    if complete:
        lines = [json.dumps({k: v for k, v in r.items() if k != "key"} | {"source": r["key"]}, ensure_ascii=False) for r in kept]
        atomic_write_text(out / OUTPUT, "\n".join(lines) + ("\n" if lines else ""))
        if export_dataset:
            import datasets

            with atomic_directory(out / "dataset", replace=True) as tmp:
                datasets.Dataset.from_list([json.loads(line) for line in lines]).save_to_disk(str(tmp))
        metadata["completed"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(out / METADATA, json.dumps(metadata, indent=2) + "\n")
    return counts, complete


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
