"""`draftheads eval`: our tree decoder against our autoregressive baseline, HF `generate` and HF
prompt-lookup decoding on the same prompts in one run, and the report numbers.

Methods run interleaved prompt by prompt (so drifting machine load hits all of them alike), each
turn after one warm-up of every method, all in the same dtype. Every method answers multi-turn
prompts with its own previous answers. With greedy decoding every token every method emitted is
re-scored teacher-forced by the model (`decoding/verify.py`), in the eval dtype and in fp32, and
each is the model's argmax, a near tie or a real mismatch. Finished prompts are appended to `<out>.partial.jsonl`,
so an interrupted eval resumes where it stopped; the file is removed once the report is written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.planning.costs import LOOKUPS, measure_costs
from draftheads.decoding.planning.search import choose_auto_tree
from draftheads.decoding.planning.stats import RankStats, rank_stats, read_calibration
from draftheads.decoding.engine import Engine, GenerationConfig, GenerationResult
from draftheads.decoding.tree import LOOKUP_NGRAM, TreeSpec, default_static_paths, engine_tree
from draftheads.decoding.verify import check_turns, dtype_name, fp32_twin, near_tie_epsilon
from draftheads.eval.config import EvalConfig
from draftheads.eval.drift import report_drift
from draftheads.eval.prompts import EvalPrompt, load_prompts
from draftheads.eval.schema import EvalReport, MethodName
from draftheads.models.backbone import Backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import ENGINES
from draftheads.models.heads_folder import FALLBACK_ANSWERS_DIR
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.device import resolve_device, resolve_dtype, synchronize
from draftheads.utils.errors import ConfigError
from draftheads.utils.jsonl import read_lines
from draftheads.utils.log import logger

@dataclass
class Method:
    """One way of answering, timed by the runner."""

    name: str
    run: Callable[[list[int], GenerationConfig], tuple[list[int], GenerationResult | None]]
    backbone: Backbone
    """The model it decodes."""
    extra: Callable[[list[int], list[int]], dict] | None = None
    """More fields to record with each turn, from its prompt ids and tokens (untimed)."""


def engine_method(name: str, engine: Engine) -> Method:
    """A method decoding with `engine`."""

    def run(prompt_ids: list[int], config: GenerationConfig):
        result = engine.generate(prompt_ids, config)
        return result.tokens, result

    return Method(name, run, engine.backbone)


def hf_method(name: str, backbone: Backbone, eos: tuple[int, ...], lookup_tokens: int | None, lookup_ngram: int | None = None) -> Method:
    """HF `generate` (or prompt-lookup decoding with `lookup_tokens`, matching n-grams of up to
    `lookup_ngram` tokens: HF's default 2 when None) on `backbone`."""

    @torch.inference_mode()
    def run(prompt_ids: list[int], config: GenerationConfig):
        device = backbone.lm_head.weight.device
        ids = torch.tensor([prompt_ids], device=device)
        sampling = config.sampling
        kwargs = dict(
            attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens, eos_token_id=list(eos),
            pad_token_id=eos[0] if eos else 0, do_sample=not sampling.greedy,
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
            torch.manual_seed(config.seed or 0)
        if lookup_tokens:
            kwargs["prompt_lookup_num_tokens"] = lookup_tokens
            if lookup_ngram:
                kwargs["max_matching_ngram_size"] = lookup_ngram
        return backbone.model.generate(ids, **kwargs)[0, len(prompt_ids) :].tolist(), None

    return Method(name, run, backbone)


class Runner:
    """Runs methods interleaved over prompts and turns, and records what each produced."""

    def __init__(self, methods: list[Method], formatter: ChatFormatter, config: GenerationConfig, epsilon: float,
                 verify: bool = False, verify_fp32: bool = False, repeats: int = 1):
        """`verify`: re-score every token of greedy answers with the model each method decodes (and,
        with `verify_fp32`, with its fp32 twin too), judged by the near-tie threshold `epsilon`;
        `repeats`: answers per method and prompt."""
        self.methods, self.formatter, self.config, self.epsilon = methods, formatter, config, epsilon
        self.verify, self.verify_fp32, self.repeats = verify, verify_fp32, repeats
        self._twins: dict[int, Backbone] = {}

    def verifiers(self, method: Method) -> tuple[Backbone, ...]:
        """The models that re-score `method`'s tokens: the one it decodes, and its fp32 twin (made
        once per model, on first use)."""
        if not self.verify_fp32 or dtype_name(method.backbone) == "float32":
            return (method.backbone,)
        key = id(method.backbone)
        if key not in self._twins:
            self._twins[key] = fp32_twin(method.backbone)
        return (method.backbone, self._twins[key])

    def generate(self, method: Method, prompt_ids: list[int], max_new: int, seed: int) -> tuple[list[int], float, GenerationResult | None]:
        config = dataclasses.replace(self.config, max_new_tokens=max_new, seed=seed)
        device = method.backbone.lm_head.weight.device
        synchronize(device)
        start = time.perf_counter()
        tokens, result = method.run(prompt_ids, config)
        synchronize(device)
        return tokens, time.perf_counter() - start, result

    def run_prompt(self, prompt: EvalPrompt, index: int, base_seed: int) -> dict:
        """Every method on one prompt (all turns), `repeats` times with the method order rotated
        each time; JSON-ready. `methods` holds the first repeat's turns, `seconds` every repeat's
        time per turn, `repeats_differ` the methods whose later repeats emitted other tokens."""
        record = {"id": prompt.id, "category": prompt.category, "methods": {}, "verify": {}, "seconds": {m.name: [] for m in self.methods},
                  "repeats_differ": []}
        for repeat in range(self.repeats):
            shift = repeat % len(self.methods)
            for method in self.methods[shift:] + self.methods[:shift]:
                turns = self._answer(method, prompt, index, base_seed)
                record["seconds"][method.name].append([t["seconds"] for t in turns])
                first = record["methods"].setdefault(method.name, turns)
                if [t["tokens"] for t in turns] != [t["tokens"] for t in first] and method.name not in record["repeats_differ"]:
                    record["repeats_differ"].append(method.name)
        if self.verify and self.config.sampling.greedy:  # untimed: after every answer
            for method in self.methods:
                answer = [(t["prompt_ids"], t["tokens"]) for t in record["methods"][method.name]]
                record["verify"][method.name] = {dtype_name(v): check_turns(v, answer).to_json() for v in self.verifiers(method)}
        return record

    def _answer(self, method: Method, prompt: EvalPrompt, index: int, base_seed: int) -> list[dict]:
        """One method's answer to every turn of a prompt, each turn after its own earlier answers."""
        answers: list[str] = []
        turns = []
        for turn_index in range(len(prompt.turns)):
            prompt_ids = self.formatter.prompt_ids(prompt.messages(answers), origin=f"prompt {prompt.id}")
            seed = base_seed * 1_000_003 + index * 101 + turn_index
            tokens, seconds, result = self.generate(method, prompt_ids, self.config.max_new_tokens, seed)
            entry = {"prompt_ids": prompt_ids, "tokens": tokens, "seconds": seconds}
            if result is not None:
                entry.update(accepted=result.accepted, tree_sizes=result.tree_sizes, predicted=result.predicted, times=result.times)
            if method.extra is not None:
                entry.update(method.extra(prompt_ids, tokens))
            turns.append(entry)
            answers.append(method.backbone.tokenizer.decode(tokens, skip_special_tokens=True))
        return turns

    def warm_up(self, prompt: EvalPrompt) -> None:
        ids = self.formatter.prompt_ids(prompt.messages([]))
        for method in self.methods:
            self.generate(method, ids, min(8, self.config.max_new_tokens), 0)


def load_draft(config: EvalConfig) -> tuple[DraftModel, str]:
    """The heads and their base in the resolved dtype, and the line that says which and why."""
    device = resolve_device(config.device)
    dtype, note = resolve_dtype(config.dtype, device)
    return DraftModel.from_pretrained(config.heads, config.base, device=device, dtype=dtype), note


def calibration(
    draft: DraftModel, progress: bool, turns: int | None = None, new_tokens: int | None = None, lookup_ngram: int = LOOKUP_NGRAM,
    heads: str | None = None,
) -> tuple[RankStats, str]:
    """The heads' rank statistics on data the eval does not see: the calibration.json written by
    training or `draftheads calibrate` (with `turns` and `new_tokens`, the positions such a decode
    makes), else the base model's answers to the packaged calibration conversations (`fallback_calibration`),
    kept in `heads` when it is a local folder (a Hub id's download is never written to)."""
    saved = read_calibration(draft.folder, turns, new_tokens) if draft.folder is not None else None
    if saved is not None:
        return saved
    from draftheads.eval.calibrate import fallback_calibration  # calibrate answers through this module's runner

    keep = Path(heads) / FALLBACK_ANSWERS_DIR if heads is not None and Path(heads).is_dir() else None
    return fallback_calibration(draft, new_tokens or 128, lookup_ngram, progress, keep)


def resolve_tree(config: EvalConfig, draft: DraftModel, progress: bool = True, turns: int | None = None,
                 held_out: tuple[RankStats, str] | None = None) -> tuple[TreeSpec, dict]:
    """The tree our decoder drafts (with the lookup branch asked for), and how it was chosen (for
    the report); see `TreeSpec`. `turns`: the most turns a prompt has (the auto tree is chosen
    for that decode's positions); `held_out`: the `calibration` to choose it with (made if None)."""
    spec, choice = _drafted_tree(config, draft, progress, turns, held_out)
    if spec.kind == "eagle2" and config.sampling.temperature > 0:
        raise ConfigError(
            f"tree.kind {config.tree.kind}: EAGLE-2 trees keep a node's children by what was drafted below them, so speculative "
            "sampling could not stay exact; set sampling.temperature 0 or tree.kind dynamic"
        )
    lookup = config.tree.lookup if config.tree.lookup != "auto" else spec.lookup  # the auto tree's choice, else none
    return dataclasses.replace(spec, lookup=lookup, lookup_ngram=config.tree.lookup_ngram), choice


def _drafted_tree(config: EvalConfig, draft: DraftModel, progress: bool, turns: int | None, held_out) -> tuple[TreeSpec, dict]:
    settings, saved = config.tree, draft.heads.config.tree
    if settings.kind == "none":
        return TreeSpec("none"), {"reason": "asked for (tree.kind none)"}
    if settings.kind in ("dynamic", "eagle2"):
        width = min(settings.width, settings.budget) if settings.kind == "dynamic" else settings.width
        return TreeSpec(settings.kind, budget=settings.budget, width=width, depth=settings.depth), {
            "reason": f"asked for (tree.kind {settings.kind})"
        }
    if settings.kind in ENGINES:
        heads = draft.heads.config
        try:
            spec = engine_tree(settings.kind, heads.head_type, heads.num_heads, saved.paths if saved is not None else None)
        except ValueError as exc:  # heads no engine of that name serves: the user's choice, not a bug
            raise ConfigError(str(exc)) from None
        return spec, {
            "reason": (
                f"how {ENGINES[settings.kind].version} drafts these heads with the export README's command "
                f"(tree.kind {settings.kind})"
            )
        }
    if settings.kind == "static":
        if settings.paths:
            return TreeSpec("static", paths=settings.paths), {"reason": "asked for (tree.paths)"}
        if saved is not None:
            return TreeSpec("static", paths=saved.paths), {"reason": f"saved by `draftheads tree` ({saved.measured_on})"}
        return TreeSpec("static", paths=default_static_paths(draft.heads.config.num_heads, settings.budget)), {
            "reason": "default static tree (no saved one)"
        }
    stats, source = held_out or calibration(draft, progress, turns, config.max_new_tokens, settings.lookup_ngram, config.heads)
    lookups = lookup_choices(config)
    static = saved.paths if saved is not None else None  # one candidate among the dynamic trees, with and without a branch
    costs = measure_costs(draft, lookups=tuple(t for t in lookups if t), ngram=settings.lookup_ngram, static_nodes=len(static or []))
    shape = (turns, config.max_new_tokens) if turns else None
    choice = choose_auto_tree(stats, costs, source, shape, lookups, settings.lookup_ngram, static)
    for line in choice.lines():
        logger(__name__).info(line)
    saved_note = f"; the static tree saved by `draftheads tree` ({saved.measured_on}) weighed among them" if saved is not None else ""
    return choice.spec, {"reason": f"auto: the highest expected tokens/s from costs measured at start-up{saved_note}", **choice.to_json()}


def lookup_choices(config: EvalConfig) -> tuple[int, ...]:
    """The lookup-branch lengths the auto tree weighs (0: none): the one asked for, else none and
    LOOKUPS for greedy decoding (copied tokens have no draft distribution: sampling cannot verify
    them losslessly)."""
    if config.tree.lookup != "auto":
        return (config.tree.lookup,)
    return (0, *LOOKUPS) if config.sampling.temperature == 0 else (0,)


def build_runner(config: EvalConfig, draft: DraftModel, tree: TreeSpec, baselines: list[Method]) -> Runner:
    """The methods of `draftheads eval` on the draft model's backbone: ours, our autoregressive
    decoding, HF generate, and the lookup `baselines` (`eval/baselines.py`)."""
    backbone = draft.backbone
    baseline = Engine(backbone)
    eos = baseline.default_eos()
    methods = [engine_method(MethodName.AUTOREGRESSIVE, baseline), engine_method(MethodName.OURS, Engine(backbone, draft.heads, tree)),
               hf_method(MethodName.HF_GENERATE, backbone, eos, None), *baselines]
    s = config.sampling
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, sampling=s, eos_token_ids=eos, seed=s.seed)
    epsilon = config.near_tie_epsilon if config.near_tie_epsilon is not None else near_tie_epsilon(backbone.lm_head.weight.dtype)
    formatter = ChatFormatter(backbone.tokenizer, model_name=backbone.location.spec)
    return Runner(methods, formatter, generation, epsilon, verify=True, verify_fp32=config.verify_fp32, repeats=config.repeats)


def run_prompts(
    runner: Runner,
    prompts: list[EvalPrompt],
    out: Path,
    fingerprint: str,
    seed: int,
    progress: bool,
    header: dict | None = None,
    desc: str = "eval",
) -> list[dict]:
    """Every prompt through every method, resuming from and appending to `<out>.partial.jsonl`
    (whose first line holds `fingerprint` and `header`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.jsonl")
    records = read_partial(partial, fingerprint)
    done = {r["id"] for r in records}
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    if todo:
        runner.warm_up(todo[0][1])
        if not partial.exists():
            partial.write_text(json.dumps({"options": fingerprint, **(header or {})}) + "\n")
        for index, prompt in tqdm(todo, desc=desc, unit="prompt", disable=not progress, initial=len(done), total=len(prompts)):
            record = runner.run_prompt(prompt, index, seed)
            with partial.open("a") as handle:  # one line per finished prompt: a kill loses at most one
                handle.write(json.dumps(record) + "\n")
            records.append(record)
    return records


def run_eval(config: EvalConfig, out: Path, progress: bool = True) -> EvalReport:
    """Run the evaluation and return the report (also resumable through `<out>.partial.jsonl`)."""
    prompts = load_prompts(config.prompts, config.limit)
    draft, dtype_note = load_draft(config)
    logger(__name__).info(f"dtype: {dtype_note}")
    turns = max(len(p.turns) for p in prompts)
    partial = out.with_name(out.name + ".partial.jsonl")
    read_partial(partial, config.fingerprint())  # a stopped run with other settings is refused before any start-up work
    resumed = resumed_header(partial, config.fingerprint())
    # what the tree is chosen with and τ predicted from: data the eval does not see
    held_out = calibration(draft, progress, turns, config.max_new_tokens, config.tree.lookup_ngram, config.heads)
    tree, tree_choice = resumed_tree(resumed) or resolve_tree(config, draft, progress, turns, held_out)
    from draftheads.eval.baselines import lookup_methods, tune_baselines

    eos = Engine(draft.backbone).default_eos()
    settings = resumed.get("baselines") or tune_baselines(config, draft.backbone, eos, progress)
    runner = build_runner(config, draft, tree, lookup_methods(draft.backbone, eos, settings))
    header = {"tree": tree.describe(), "tree_choice": tree_choice, "baselines": settings}
    records = run_prompts(runner, prompts, out, config.fingerprint(), config.sampling.seed, progress, header)
    from draftheads.eval.metrics import ReportContext

    context = ReportContext(tree_choice=tree_choice, baselines=settings, dtype_note=dtype_note, backbone_drift=None)
    return report_from_records(config, draft, tree, records, context, held_out, runner.epsilon)


def report_from_records(
    config: EvalConfig, draft: DraftModel, tree: TreeSpec, records: list[dict], context, held_out, epsilon: float
) -> EvalReport:
    """The report of decoded `records` (each prompt's turns under the `MethodName`s), with the
    heads' ranks on the autoregressive answers and a trained backbone's drift measured now: what
    `draftheads eval` writes, and what a bench that decodes several heads in one run writes for each."""
    from draftheads.eval.metrics import build_report

    # The heads' ranks on the base model's own answers (the autoregressive ones): a measurement of the
    # heads on these prompts; the prediction comes from calibration data the eval does not see.
    answers = [(turn, t) for r in records for turn, t in enumerate(r["methods"][MethodName.AUTOREGRESSIVE])]
    sequences = [(t["prompt_ids"] + t["tokens"], len(t["prompt_ids"]), turn) for turn, t in answers]
    drift = report_drift(draft, config.drift_batches, draft.backbone.lm_head.weight.device, dtype_name(draft.backbone))
    context = dataclasses.replace(context, backbone_drift=drift)
    return build_report(config, draft, tree, records, rank_stats(draft, sequences), context, held_out, epsilon)


def resumed_header(partial: Path, fingerprint: str) -> dict:
    """The header of a stopped run with these settings ({} when there is none): what it chose at
    start-up from measurements (the auto tree, the tuned baselines), which a resumed run keeps, since
    choices made anew from timings taken now could differ and the records would mix."""
    header, _ = partial_lines(partial)
    return header if header.get("options") == fingerprint else {}


def resumed_tree(header: dict) -> tuple[TreeSpec, dict] | None:
    """The tree a stopped run began with, from its `resumed_header`."""
    if "tree" not in header:
        return None  # run_prompts refuses other settings; a header without a tree leaves the choice to this run
    spec = TreeSpec.from_description(header["tree"])
    choice = header.get("tree_choice", {})
    return spec, {**choice, "reason": f"resumed with the tree the run began with ({choice.get('reason', 'unknown')})"}


def finished_prompts(out: Path, fingerprint: str) -> list[dict]:
    """The records a run with `fingerprint` has finished so far (to report a run stopped early)."""
    return read_partial(out.with_name(out.name + ".partial.jsonl"), fingerprint)


def partial_lines(path: Path) -> tuple[dict, list[str]]:
    """A partial file's header and its lines ({} and [] when there is none)."""
    if not path.exists():
        return {}, []
    lines = [line for _, line in read_lines(path)]
    return (json.loads(lines[0]) if lines else {}), lines


def read_partial(path: Path, fingerprint: str) -> list[dict]:
    """The records of a partial file written with `fingerprint` (refusing one of other settings);
    a line cut by a kill is dropped from the file, and that record is made again."""
    if not path.exists():
        return []
    header, lines = partial_lines(path)
    if header.get("options") != fingerprint:
        raise ConfigError(f"{path}: left by a run with other settings; delete it, or rerun with the same settings to resume")
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: drop it, that prompt runs again
            kept = [lines[0]] + [json.dumps(r) for r in records]
            atomic_write_text(path, "\n".join(kept) + "\n")
            break
    return records
