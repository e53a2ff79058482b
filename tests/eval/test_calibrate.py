"""`draftheads calibrate`: rank statistics on the base model's own multi-turn answers to a prompt
set, located by turn and answer offset as training's held-out rows are, written where eval reads them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from draftheads.decoding.planning.stats import OFFSET_BUCKET, Answer, RankStats, rank_stats, read_calibration
from draftheads.decoding.planning.walks import LOOKUP_CAP
from draftheads.eval.calibrate import calibrate
from draftheads.models.heads_folder import PREVIOUS_CALIBRATION_NAME as PREVIOUS_NAME
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.models.draft_model import DraftModel
from draftheads.scripts.cli import main
from helpers import assert_named, fixed_baselines, random_medusa_heads, write_jsonl

NEW_TOKENS = 40
"""Long enough for answer offsets past the first bucket (32), so misplaced offsets change the cells."""


@pytest.fixture
def questions(tmp_path):
    return write_jsonl(
        tmp_path / "calibration.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
            {"question_id": 2, "category": "math", "turns": ["What is 12 times 7?", "And 13 times 7?"]},
        ],
    )


def answers_of(path) -> list[Answer]:
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [
        Answer(t["prompt_ids"] + t["tokens"] + t["past"], len(t["prompt_ids"]), turn, len(t["past"]))
        for r in lines
        for turn, t in enumerate(r["methods"]["baseline"])
    ]


def test_calibrate_locates_every_answer_position_by_turn_and_offset(varied_base, questions, tmp_path, capsys):
    heads = random_medusa_heads(varied_base, tmp_path)
    (heads / "calibration.json").write_text('{"source": "training", "positions": 0, "depth_topk": [], "path_counts": []}\n')
    command = ["calibrate", "--heads", str(heads), "--prompts", str(questions), "--max-new-tokens", str(NEW_TOKENS), "--dtype", "float32"]
    assert main(command) == 0
    assert json.loads((heads / PREVIOUS_NAME).read_text())["source"] == "training"
    assert (
        main([*command, "--limit", "1", "--answers", str(tmp_path / "one")]) == 0
    )  # another calibration replaces this one; training's stays kept
    assert json.loads((heads / PREVIOUS_NAME).read_text())["source"] == "training"
    assert main(command) == 0  # the answers of the first run are read again, not made again
    assert_named(heads)
    data = json.loads((heads / "calibration.json").read_text())
    assert data["source"] == f"the base model's greedy answers to 2 prompts of {questions} (2 turn(s) x {NEW_TOKENS} new tokens, float32)"
    sequences = answers_of(heads / "calibration-answers.partial.jsonl")
    assert [a.turn for a in sequences] == [0, 1, 0, 1]
    walks = RankStats.from_json(json.loads((heads / "calibration.json").read_text())).walks
    assert [w.length for w in walks] == [len(a.ids) - a.past - a.start for a in sequences]  # what each answer emits
    assert all(a.past == LOOKUP_CAP and len(a.ids) - a.past - a.start <= NEW_TOKENS for a in sequences)
    # A decode drafts from an answer's second token: position t (offset t + 2 - start) for every t
    # from start - 1 whose deepest target (t + 1 + depths) is still in the answer.
    depths = 3
    expected: dict[tuple[int, int], int] = {}
    for ids, start, turn, past in sequences:
        for t in range(start - 1, len(ids) - past - 1 - depths):
            cell = (turn, (t + 2 - start) // OFFSET_BUCKET)
            expected[cell] = expected.get(cell, 0) + 1
    stats = RankStats.from_json(data)
    assert {cell: c.positions for cell, c in stats.cells.items()} == expected
    assert (1, 1) in expected  # the second bucket of a second turn is reached
    assert stats.positions == sum(expected.values())
    recomputed = rank_stats(DraftModel.from_pretrained(str(heads), device="cpu", dtype="float32"), sequences, keep_walks=True)
    assert recomputed.to_json() == stats.to_json()
    shaped, source = read_calibration(heads, 1, NEW_TOKENS)
    assert shaped.positions == sum(c for (turn, bucket), c in expected.items() if turn == 0 and bucket * OFFSET_BUCKET < NEW_TOKENS)
    assert f"prompts of {questions}" in source


def test_calibrate_resumes_from_its_answers_and_refuses_other_settings(varied_base, questions, tmp_path):
    heads = random_medusa_heads(varied_base, tmp_path)
    out, answers = tmp_path / "cal.json", tmp_path / "answers"
    first, _ = calibrate(str(heads), str(questions), max_new_tokens=12, dtype="float32", out=str(out), answers=str(answers), progress=False)
    partial = tmp_path / "answers.partial.jsonl"
    lines, answered = partial.read_text().splitlines(), answers_of(partial)
    partial.write_text("\n".join(lines[:-1]) + "\n")  # as if stopped after the first prompt
    again, _ = calibrate(str(heads), str(questions), max_new_tokens=12, dtype="float32", out=str(out), answers=str(answers), progress=False)
    resumed = partial.read_text().splitlines()
    assert resumed[:-1] == lines[:-1] and len(resumed) == len(lines)  # the first prompt kept, the second answered once
    assert answers_of(partial) == answered
    assert again.to_json() == first.to_json()
    assert not (heads / "calibration.json").exists()  # --out elsewhere leaves the heads folder alone
    code = main(
        [
            "calibrate", "--heads", str(heads), "--prompts", str(questions), "--max-new-tokens", "16", "--dtype", "float32", "--out",
            str(out), "--answers", str(answers)
        ]
    )
    assert code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "missing.jsonl"], "missing.jsonl"),
        (["--max-new-tokens", "1"], "--max-new-tokens must be at least 2"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_calibrate_bad_input_is_one_line_and_exit_2(varied_base, questions, tmp_path, capsys, args, message):
    heads = random_medusa_heads(varied_base, tmp_path)
    options = {"--prompts": str(questions), "--max-new-tokens": "8"}
    options.update(dict(zip(args[::2], args[1::2])))
    capsys.readouterr()  # what making the heads printed
    code = main(["calibrate", "--heads", str(heads), "--dtype", "float32", *[w for kv in options.items() for w in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (heads / "calibration.json").exists()


def test_calibrate_refuses_a_damaged_calibration_before_answering_and_leaves_it(varied_base, questions, tmp_path, capsys):
    heads = random_medusa_heads(varied_base, tmp_path)
    (heads / "calibration.json").write_text("{not json\n")
    capsys.readouterr()
    assert main(["calibrate", "--heads", str(heads), "--prompts", str(questions), "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration.json: not a calibration file" in err and len(err.splitlines()) == 1
    assert (heads / "calibration.json").read_text() == "{not json\n"
    assert not (heads / "calibration-answers.partial.jsonl").exists() and not (heads / PREVIOUS_NAME).exists()


def test_ranks_are_those_of_the_tokens_each_depth_drafts(varied_base, tmp_path):
    """Medusa heads without layers, sharing the lm_head, draft every depth from the base model's own
    next-token logits at the position. So depth k's rank at position t is the rank of token t+1+k
    under the logits at t, and its statistics never rank the true token first the way the next token
    (t+1, the greedy answer's own) would."""
    from draftheads.models.backbone import BackboneConfig, load_backbone
    from draftheads.models.heads.medusa import MedusaConfig

    backbone = load_backbone(BackboneConfig(base=str(varied_base), dtype="float32"), "cpu")
    draft = DraftModel.new(backbone, MedusaConfig(num_heads=2, head_layers=0))
    ids = backbone.tokenizer("the boat sails home at dusk and the small red").input_ids
    answer = Engine(backbone).generate(ids, GenerationConfig(max_new_tokens=24, eos_token_ids=())).tokens
    sequence = ids + answer
    stats = rank_stats(draft, [(sequence, len(ids), 0)], keep_walks=True)
    logits = backbone.model(torch.tensor([sequence])).logits[0]
    for i, row in enumerate(stats.walks[0].ranks):
        t = len(ids) - 1 + i
        for k, rank in enumerate(row, start=1):
            if t + 1 + k < len(sequence):
                expected = int((logits[t] > logits[t, sequence[t + 1 + k]]).sum())
                assert rank == min(expected, 10), (i, k)
            else:
                assert rank == 10
    assert stats.depth_topk[0][0] < 0.5  # ranks against the root token would all be 0


def test_calibrate_refuses_a_folder_that_is_not_heads(questions, tmp_path, capsys):
    code = main(["calibrate", "--heads", str(tmp_path), "--prompts", str(questions)])
    assert code == 2 and "not a local heads folder" in capsys.readouterr().err


def test_eval_predicts_the_lookup_branch_by_replaying_its_steps_on_the_calibration_answers(tmp_path):
    """Calibrated on the very prompt it then decodes (to check the mechanism, not a figure), the
    replay makes the decode's own steps: predicted τ equals measured τ, lookup copies included. The
    demo model, because a random tiny one does not repeat itself within a short answer."""
    from draftheads.decoding.tree import TreeSpec
    from draftheads.eval.config import EvalConfig
    from draftheads.eval.runner import run_eval

    heads = random_medusa_heads("demo:smollm2-135m", tmp_path)
    prompt = write_jsonl(
        tmp_path / "repeat.jsonl",
        [{"question_id": 1, "category": "writing", "turns": ["Repeat this sentence four times: the small red boat sails home at dusk."]}],
    )
    calibrate(str(heads), str(prompt), max_new_tokens=32, dtype="float32", progress=False)
    config = EvalConfig(
        heads=str(heads), prompts=str(prompt), **fixed_baselines(), max_new_tokens=32, tree=TreeSpec("none", lookup=10), dtype="float32"
    )
    report = run_eval(config, tmp_path / "report.json", progress=False)
    assert report.greedy_mismatches == 0
    assert "replayed" in report.tau_predicted_source and "10-token lookup branch" in report.tau_predicted_source
    assert report.tau > 2  # the answer repeats the sentence: long copies are accepted
    assert report.tau_predicted == pytest.approx(report.tau, abs=1e-12)
    assert report.acceptance_by_depth_predicted == pytest.approx(report.acceptance_by_depth, abs=1e-12)


def test_the_auto_tree_weighs_the_lookup_branch_from_the_calibration(tmp_path, capsys, monkeypatch):
    """With heads calibrated on answers that repeat themselves, `--tree auto` (no --tree-lookup)
    weighs lookup branches by their replayed copies and measured costs; the branch it picks is the
    one decoded. (Costs are measured for two tree shapes only, to keep the test short.)"""
    import functools

    from draftheads.decoding.planning.costs import measure_costs
    from draftheads.eval import runner
    from draftheads.eval.config import EvalConfig
    from draftheads.eval.runner import resolve_tree

    monkeypatch.setattr(runner, "measure_costs", functools.partial(measure_costs, budgets=(1, 2), widths=(1,)))

    heads = random_medusa_heads("demo:smollm2-135m", tmp_path)
    prompt = write_jsonl(
        tmp_path / "repeat.jsonl",
        [{"question_id": 1, "category": "writing", "turns": ["Repeat this sentence four times: the small red boat sails home at dusk."]}],
    )
    calibrate(str(heads), str(prompt), max_new_tokens=32, dtype="float32", progress=False)
    draft = DraftModel.from_pretrained(str(heads), dtype="float32")
    tree, choice = resolve_tree(
        EvalConfig(heads=str(heads), prompts=str(prompt), max_new_tokens=32, dtype="float32"), draft, progress=False, turns=1
    )
    # random heads never pay for their nodes; copies of a sentence said four times do
    assert tree.lookup == choice["lookup"] in (4, 8, 12, 16) and choice["expected_tau"] > 2
    assert {c["lookup"] for c in choice["candidates"]} == {0, 4, 8, 12, 16}
    assert "lookup branch" in capsys.readouterr().out


def test_a_fixed_lookup_branch_is_kept_and_sampling_weighs_none():
    from draftheads.decoding.sampling import SamplingConfig
    from draftheads.decoding.tree import TreeSpec
    from draftheads.eval.config import EvalConfig
    from draftheads.eval.runner import lookup_choices

    assert lookup_choices(EvalConfig(heads="h")) == (0, 4, 8, 12, 16)
    assert lookup_choices(EvalConfig(heads="h", tree=TreeSpec("auto", lookup=0))) == (0,)
    assert lookup_choices(EvalConfig(heads="h", tree=TreeSpec("auto", lookup=10))) == (10,)
    assert lookup_choices(EvalConfig(heads="h", sampling=SamplingConfig(temperature=0.7))) == (0,)


def test_engine_trees_decode_as_the_engine_drafts_and_refuse_heads_it_does_not_serve(tmp_path):
    from draftheads.decoding.tree import TreeSpec
    from draftheads.eval.config import EvalConfig
    from draftheads.eval.runner import resolve_tree
    from draftheads.utils.errors import ConfigError

    heads = random_medusa_heads("demo:smollm2-135m", tmp_path)
    draft = DraftModel.from_pretrained(str(heads), dtype="float32")
    config = EvalConfig(heads=str(heads), max_new_tokens=32, dtype="float32", tree=TreeSpec("reference", lookup="auto"))
    tree, choice = resolve_tree(config, draft, progress=False, turns=1)
    assert len(tree.paths) == 7 + 7 * 6 and "medusa-llm 0.1" in choice["reason"]  # medusa_choices=[1, 7, 6]
    with pytest.raises(ConfigError, match=r"tree\.kind vllm: medusa heads are served .* by reference, trtllm"):
        resolve_tree(dataclasses.replace(config, tree=TreeSpec("vllm", lookup="auto")), draft, progress=False, turns=1)


def test_the_fallback_keeps_its_answers_in_a_local_heads_folder_and_answers_once(varied_base, tmp_path, monkeypatch):
    from draftheads.eval.runner import Runner, calibration
    from draftheads.models.heads_folder import FALLBACK_ANSWERS_DIR

    heads = random_medusa_heads(varied_base, tmp_path)
    draft = DraftModel.from_pretrained(str(heads), device="cpu", dtype="float32")
    stats, source = calibration(draft, False, 2, 6, heads=str(heads))
    kept = list((heads / FALLBACK_ANSWERS_DIR).iterdir())
    assert len(kept) == 1 and kept[0].name.endswith(".partial.jsonl") and "48 two-turn conversations" in source
    assert len(kept[0].read_text().splitlines()) == 1 + 48  # the header, then one line per conversation
    assert_named(heads)

    def no_answers(*args, **kwargs):
        raise AssertionError("answered again")

    monkeypatch.setattr(Runner, "run_prompt", no_answers)
    again, _ = calibration(draft, False, 2, 6, heads=str(heads))  # the kept answers, not new ones
    assert again.to_json() == stats.to_json()
    with pytest.raises(AssertionError, match="answered again"):  # another length: other answers, beside the first
        calibration(draft, False, 2, 5, heads=str(heads))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="answered again"):  # a Hub id's download is never written to
        calibration(draft, False, 2, 6, heads="someone/heads")
    assert not (tmp_path / "someone").exists()
