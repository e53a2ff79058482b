"""`draftheads calibrate`: the heads' joint rank statistics on the base model's own greedy answers to
a prompt set like the one they will serve, written as the heads' calibration.json.

Training writes calibration.json from held-out rows of its own data; `draftheads eval` predicts τ
from it and `--tree auto` sizes trees with it. When the served prompts differ from the training
prompts, so does acceptance, and a calibration drawn like the served prompts is what removes the
difference.
The answers are generated turn by turn as a decode makes them (each turn's context holds the earlier
answers), so the statistics keep their cells of turn and answer offset (`RankStats.within`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.planning.stats import Answer, RankStats, calibration_json, rank_stats, read_calibration
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.verify import dtype_name
from draftheads.decoding.planning.walks import LOOKUP_CAP
from draftheads.eval.prompts import EvalPrompt, load_prompts
from draftheads.eval.runner import Runner, engine_method, run_prompts
from draftheads.eval.schema import MethodName
from draftheads.models.backbone import Backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads_folder import CALIBRATION_NAME, CONFIG_NAME, PREVIOUS_CALIBRATION_NAME
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.device import resolve_device, resolve_dtype
from draftheads.utils.errors import ConfigError
from draftheads.utils.log import logger

FALLBACK_PROMPTS = ("calibration", None)
"""The prompt set and count whose greedy answers calibrate heads that carry no calibration.json
(imported heads): the whole written calibration set (48 two-turn questions, six in each of
MT-bench's eight categories), never the eval's own prompts. What the lookup branch copies varies
most from conversation to conversation (a second turn that rewrites the first answer copies most
of it), so a set of 8 leaves the prediction's bootstrap SD at 6-10%; 48 bring it near 3%. It also
varies with how much the prompt carries to copy from: a quarter of served first turns hold over
400 characters (ShareGPT's first user turns: quartiles 52, 116 and 401 characters), so one question
per category brings a page of material (a draft, code, notes, a table, a passage)."""
MATERIAL_CHARS = 400
"""Characters over which a first turn carries material to work on (ShareGPT's upper quartile of first user turns)."""


def answer_sequences(backbone: Backbone, prompts: list[EvalPrompt], max_new_tokens: int, answers: Path | None, progress: bool = True,
                     model: str | None = None) -> list[Answer]:
    """The base model's greedy answers to every turn of `prompts`, as an eval's baseline makes them
    (each turn's context holds the earlier answers), each followed by LOOKUP_CAP tokens of its
    greedy continuation past the answer's end (EOS or the limit), which a decode's last step verifies
    but does not emit (τ counts emitted tokens only). Resumable through
    `<answers>.partial.jsonl` (one line per finished prompt; None: kept in memory only); a run with
    other settings, or another `model` (None: the base model itself; else what the backbone is
    beyond it, such as a merged adapter or a trained backbone), is refused."""
    engine = Engine(backbone)

    def past(prompt_ids: list[int], tokens: list[int]) -> dict:
        return {"past": engine.generate(prompt_ids + tokens, GenerationConfig(max_new_tokens=LOOKUP_CAP, eos_token_ids=())).tokens}

    method = dataclasses.replace(engine_method(MethodName.AUTOREGRESSIVE, engine), extra=past)
    formatter = ChatFormatter(backbone.tokenizer, model_name=backbone.location.spec)
    runner = Runner([method], formatter, GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=engine.default_eos()), 0.0)
    fingerprint = answers_fingerprint(backbone, prompts, max_new_tokens, model)
    if answers is None:
        records = [runner.run_prompt(p, i, 0) for i, p in enumerate(tqdm(prompts, desc="calibration answers", disable=not progress))]
    else:
        records = run_prompts(runner, prompts, answers, fingerprint, 0, progress, desc="calibration answers")
    turns = [(turn, t) for r in records for turn, t in enumerate(r["methods"][MethodName.AUTOREGRESSIVE])]
    return [Answer(t["prompt_ids"] + t["tokens"] + t["past"], len(t["prompt_ids"]), turn, len(t["past"])) for turn, t in turns]


def answers_fingerprint(backbone: Backbone, prompts: list[EvalPrompt], max_new_tokens: int, model: str | None = None) -> str:
    """What `answer_sequences` resumes by: the base model (and `model`, what the backbone is beyond
    it), the dtype, the lengths and the prompts."""
    settings = {"max_new_tokens": max_new_tokens, "past_tokens": LOOKUP_CAP, "prompts": [p.id for p in prompts]}
    return json.dumps(
        {"calibration answers of": backbone.location.spec, **({"model": model} if model else {}), "dtype": dtype_name(backbone), **settings}
    )


def _beyond_base(draft: DraftModel) -> str | None:
    """What the backbone is beyond the base model, for `answers_fingerprint`. A frozen backbone is
    the base model, whatever heads ride on it: their answers are shared (None)."""
    return None if draft.backbone_mode == "frozen" else f"the {draft.backbone_mode} backbone of {Path(draft.folder).resolve()}"


def fallback_calibration(draft: DraftModel, new_tokens: int, lookup_ngram: int, progress: bool = True,
                         keep: Path | None = None) -> tuple[RankStats, str]:
    """The heads' statistics on the base model's answers to the FALLBACK_PROMPTS, `new_tokens` long (up
    to 256: acceptance varies along an answer), answers kept so the decode is replayed on them. With
    `keep` (a folder), the answers are kept there too, one resumable file per setting, so the next
    eval of the same heads answers nothing again."""
    length = min(new_tokens, 256)
    prompts = load_prompts(*FALLBACK_PROMPTS)
    model = _beyond_base(draft)
    fingerprint = answers_fingerprint(draft.backbone, prompts, length, model)
    answers = keep / hashlib.sha256(fingerprint.encode()).hexdigest()[:16] if keep is not None else None
    sequences = answer_sequences(draft.backbone, prompts, length, answers, progress, model)
    stats = rank_stats(draft, sequences, keep_walks=True, lookup_ngram=lookup_ngram)
    return stats, (
        f"the base model's greedy answers to {len(prompts)} two-turn conversations of the {FALLBACK_PROMPTS[0]} set "
        f"({stats.positions} positions; the heads "
        "carry no calibration.json: `draftheads calibrate` on prompts like the served ones predicts better)"
    )


def calibrate(
    heads: str, prompts: str, limit: int | None = None, max_new_tokens: int = 128, base: str | None = None,
    device: str = "auto", dtype: str = "auto", out: str | None = None, answers: str | None = None, progress: bool = True,
) -> tuple[RankStats, Path]:
    """Answer `prompts` with the base model, measure the heads' rank statistics on the answers and
    write them to `out` (default: the heads' calibration.json; the first file it replaces there is
    kept beside it as PREVIOUS_CALIBRATION_NAME). Returns the statistics and the file written."""
    folder = Path(heads)
    if out is None and not (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"--heads {heads}: not a local heads folder (no {CONFIG_NAME}); give --out to write the calibration elsewhere")
    if max_new_tokens < 2:
        raise ConfigError(f"--max-new-tokens must be at least 2 (a head drafts from an answer's second token on), got {max_new_tokens}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    log = logger(__name__)
    target = Path(out) if out is not None else folder / CALIBRATION_NAME
    replaced = read_calibration(folder) if out is None else None  # a damaged file is refused before any work
    chosen = load_prompts(prompts, limit)
    resolved = resolve_device(device)
    dtype_name, note = resolve_dtype(dtype, resolved)
    log.info(f"dtype: {note}")
    draft = DraftModel.from_pretrained(heads, base, device=resolved, dtype=dtype_name)
    work = (
        Path(answers) if answers is not None else target.with_name(target.stem + "-answers")
    )  # CALIBRATION_ANSWERS_NAME in a heads folder
    sequences = answer_sequences(draft.backbone, chosen, max_new_tokens, work, progress, _beyond_base(draft))
    stats = rank_stats(draft, sequences, keep_walks=True)
    if not stats.positions:
        raise ConfigError(
            f"{prompts}: the answers are too short to draft in (some answer needs more than {draft.heads.config.num_heads} tokens)"
        )
    turns = max(len(p.turns) for p in chosen)
    source = (
        f"the base model's greedy answers to {len(chosen)} prompts of {prompts} "
        f"({turns} turn(s) x {max_new_tokens} new tokens, {dtype_name})"
    )
    previous = folder / PREVIOUS_CALIBRATION_NAME
    # The first calibration replaced (training's, typically) is the one kept: a later one never overwrites it.
    if replaced is not None and not previous.exists():
        atomic_write_text(previous, target.read_text())
        log.info(f"kept the calibration it replaces as {previous}")
    atomic_write_text(target, calibration_json(stats, source))
    log.info(f"calibration: {stats.positions} positions; top-1 by depth: " + ", ".join(f"{row[0]:.3f}" for row in stats.depth_topk))
    log.info(f"wrote {target} ({source})")
    return stats, target
