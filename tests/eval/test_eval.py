"""`draftheads tree` and `draftheads eval` end to end on a tiny base model with the demo tokenizer."""

from __future__ import annotations

import json

import pytest

from draftheads.decoding.tree import TreeSpec
from draftheads.eval.config import EvalConfig
from draftheads.eval.report import read_report
from draftheads.eval.runner import run_eval
from draftheads.eval.schema import BASELINES, SCHEMA_VERSION, MethodName
from draftheads.models.draft_model import read_head_config
from draftheads.scripts.cli import main
from draftheads.utils.errors import ConfigError
from helpers import FIXED_BASELINES, fixed_baselines, random_medusa_heads, write_jsonl


@pytest.fixture(scope="module")
def heads_dir(varied_base, tmp_path_factory):
    """Heads on a base whose greedy answers vary, so "0 mismatches" says something."""
    return random_medusa_heads(varied_base, tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def repeating_heads_dir(tiny_base, tmp_path_factory):
    """Heads on a base that repeats one token, which random heads rank in their top 10: the tree
    search has rank statistics to work with (on the varied base they never rank the true token)."""
    return random_medusa_heads(tiny_base, tmp_path_factory.mktemp("repeating-heads"))


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
            {"question_id": 2, "category": "math", "turns": ["What is 12 times 7?"]},
        ],
    )


def test_eval_writes_a_complete_report_and_is_lossless(heads_dir, prompts, tmp_path, capsys):
    out = tmp_path / "reports" / "demo" / "report.json"  # eval makes the folders it writes into
    code = main(
        [
            "eval", *FIXED_BASELINES[:-1], "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(prompts), "--max-new-tokens",
            "12", "--tree", "dynamic", "--tree-budget", "6", "--out", str(out)
        ]
    )
    assert code == 0
    report = read_report(out)  # typed: every field present, of this schema version
    assert report.schema_version == SCHEMA_VERSION and report.to_json() == json.loads(out.read_text())
    assert report.n_prompts == 2 and report.n_turns == 3 and report.head_type == "medusa"
    assert report.greedy_mismatches == 0 and report.hardware and report.versions and report.tau_predicted is not None
    # every token of every method re-scored (fp32 eval: one re-scoring), with the emitted ids in the report
    assert list(report.methods) == [
        MethodName.AUTOREGRESSIVE,
        MethodName.OURS,
        MethodName.HF_GENERATE,
        MethodName.HF_PROMPT_LOOKUP,
        MethodName.LOOKUP,
    ]
    assert report.baselines["lookup"] == {"tokens": 8, "ngram": 2, "chosen": "as configured"}
    assert report.best_baseline in BASELINES
    for name in report.methods:
        (row,) = report.verification[name].values()
        assert row.tokens_verified == row.tokens_emitted == report.methods[name].tokens > 0 and row.mismatches == 0
        assert sum(len(t["tokens"]) for a in report.answers for t in a["methods"][name]) == row.tokens_emitted
    # three interleaved repeats: each ratio with its spread and interval; the median is the headline
    ratio = report.speed_ratios["ours/baseline"]
    assert ratio.repeats == 3 and len(ratio.per_repeat) == 3 and ratio.min <= ratio.median <= ratio.max
    assert ratio.ci95[0] <= ratio.ci95[1] and report.ratio("ours", "baseline") == ratio.median and report.repeats_differ == []
    assert report.summary()["speedup_vs_best_baseline"] == report.speed_ratios[f"ours/{report.best_baseline}"].median
    report = report.to_json()
    assert report["tau"] == pytest.approx(1 + sum(report["acceptance_by_depth"]))
    assert set(report["tau_by_category"]) == {"writing", "math"}
    assert out.with_suffix(".md").read_text().startswith("# draftheads eval")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not out.with_name("report.json.partial.jsonl").exists()
    assert "greedy mismatches: 0" in capsys.readouterr().out


def test_eval_resumes_from_its_partial_file_and_refuses_other_settings(heads_dir, prompts, tmp_path):
    out = tmp_path / "report.json"
    options = EvalConfig(
        heads=str(heads_dir),
        prompts=str(prompts),
        **fixed_baselines(),
        max_new_tokens=6,
        tree=TreeSpec("static", budget=4),
        dtype="float32",
    )
    first = run_eval(options, out, progress=False)
    partial = out.with_name("report.json.partial.jsonl")
    lines = partial.read_text().splitlines()
    assert len(lines) == 3  # header + one line per prompt
    partial.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # the last prompt was cut by a kill
    second = run_eval(options, out, progress=False)
    assert second.methods["baseline"].tokens == first.methods["baseline"].tokens
    kept = json.loads(partial.read_text().splitlines()[1])
    assert kept["methods"]["ours"][0]["seconds"] == json.loads(lines[1])["methods"]["ours"][0]["seconds"]
    with pytest.raises(ConfigError, match="other settings"):
        run_eval(EvalConfig(heads=str(heads_dir), prompts=str(prompts), **fixed_baselines(), max_new_tokens=7), out, progress=False)


def test_a_resumed_auto_tree_eval_decodes_with_the_tree_it_began_with(heads_dir, prompts, tmp_path):
    out = tmp_path / "report.json"
    options = EvalConfig(heads=str(heads_dir), prompts=str(prompts), **fixed_baselines(), max_new_tokens=6, dtype="float32")  # tree auto
    run_eval(options, out, progress=False)
    partial = out.with_name("report.json.partial.jsonl")
    lines = partial.read_text().splitlines()
    header = json.loads(lines[0])
    # Costs measured at a restart could pick another tree; the run must go on with its own.
    header["tree"] = {"kind": "dynamic", "budget": 3, "width": 2}
    partial.write_text("\n".join([json.dumps(header), lines[1]]) + "\n")  # stopped after the first prompt
    report = run_eval(options, out, progress=False)
    assert {k: report.tree[k] for k in ("kind", "budget", "width")} == {"kind": "dynamic", "budget": 3, "width": 2}
    assert report.tree_choice["reason"].startswith("resumed with the tree the run began with")


def test_tree_search_saves_a_tree_that_eval_weighs_and_uses_when_asked(repeating_heads_dir, prompts, tmp_path, capsys):
    heads_dir = repeating_heads_dir
    assert main(["tree", "--heads", str(heads_dir), "--prompts", str(prompts), "--budget", "4", "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and "verify ms by nodes" in printed
    choice = read_head_config(heads_dir).tree
    assert choice is not None and 1 <= len(choice.paths) <= 4
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(prompts), "--max-new-tokens",
                "8", "--out", str(out)
            ]
        )
        == 0
    )
    auto = json.loads(out.read_text())["tree_choice"]  # --tree auto: the saved tree is one candidate, not a short circuit
    assert "weighed among them" in auto["reason"] and [c for c in auto["candidates"] if c.get("paths") == choice.paths]
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(prompts), "--max-new-tokens",
                "8", "--tree", "static", "--out", str(out)
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["tree"]["kind"] == "static" and report["tree"]["paths"] == choice.paths
    assert report["greedy_mismatches"] == 0


def test_bad_eval_inputs_are_named(heads_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"turns": ["ok"]}, {"question": "no turns"}])
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(bad), "--out",
                str(tmp_path / "r.json")
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err
    assert main(["eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(tmp_path / "missing"), "--prompts", str(bad)]) == 2
    assert not (tmp_path / "r.json").exists()


def test_eval_of_jointly_trained_heads_reports_the_backbone_drift_and_stays_lossless(varied_base, prompts, tmp_path, capsys):
    from draftheads.train.config import load_recipe
    from draftheads.train.loop import train
    from helpers import overrides

    run = tmp_path / "lora"
    settings = {"train.backbone.mode": "lora", "train.backbone.lora.rank": 4, "train.lr": 0.003, "train.max_steps": 6}
    train(load_recipe(None, overrides(varied_base, run, **settings)), progress=False)
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(run / "heads"), "--prompts", str(prompts),
                "--max-new-tokens", "12", "--tree-budget", "6", "--out", str(out)
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    # The autoregressive baseline and HF generate run the trained (merged) backbone: still lossless.
    assert report["backbone_mode"] == "lora" and report["greedy_mismatches"] == 0 and report["hf_generate_mismatches"] == 0
    # The tree and τ predicted come from the held-out positions a decode of 2 turns x 12 tokens makes.
    assert "the positions a decode of 2 turn(s) x 12 new tokens makes" in report["tree_choice"]["calibration"]
    drift = report["backbone_drift"]
    trained = json.loads((run / "heads" / "training.json").read_text())["backbone"]["drift"]
    # The same held-out rows as training's last evaluation, through the merged adapter instead of peft's.
    assert drift["positions"] == trained["positions"]
    assert abs(drift["agreement"] - trained["agreement"]) <= 2 / drift["positions"] and drift["agreement"] < 1.0
    assert drift["perplexity_trained"] == pytest.approx(trained["perplexity_trained"], rel=1e-3)
    assert drift["perplexity_original"] == pytest.approx(trained["perplexity_original"], rel=1e-6)
    assert "backbone (lora): agrees with the original on" in capsys.readouterr().out
    assert "it is not the original model" in out.with_suffix(".md").read_text()

    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(run / "heads"), "--prompts", str(prompts), "--drift-batches",
                "0"
            ]
        )
        == 2
    )
    assert "drift_batches must be at least 1" in capsys.readouterr().err
    (run / "heads" / "recipe.yaml").unlink()
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(run / "heads"), "--prompts", str(prompts),
                "--max-new-tokens", "4", "--out", str(tmp_path / "again.json")
            ]
        )
        == 0
    )
    assert "drift was not measured" in capsys.readouterr().out


def test_auto_tree_measures_costs_and_eval_writes_its_summary_into_the_heads(heads_dir, prompts, tmp_path, capsys):
    out = tmp_path / "auto.json"
    assert (
        main(
            [
                "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(prompts), "--max-new-tokens",
                "8", "--out", str(out)
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    choice = report["tree_choice"]
    assert "tree auto:" in printed and choice["costs"]["verify_ms_by_nodes"]["1"] > 0
    assert "two-turn conversations of the calibration set" in choice["calibration"]  # no calibration.json: never the eval's own prompts
    if read_head_config(heads_dir).tree is not None:  # another test saved a tree into these heads first: weighed, not taken as is
        assert "weighed among them" in choice["reason"] and any("paths" in c for c in choice["candidates"])
    summary = json.loads((heads_dir / "eval_report.json").read_text())
    assert summary["tau"] == report["tau"] and summary["dtype"] == "float32"
    from draftheads.models.card import model_card

    card = model_card(read_head_config(heads_dir), None, summary)
    assert "speedup over HF `generate`" in card and f"{report['tau']:.3f}" in card


def test_eval_config_files_and_bad_settings(heads_dir, prompts, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"heads: {heads_dir}\nprompts: {prompts}\nmax_new_tokens: 4\ntree: {{kind: dynamic, budget: 3}}\ndtype: float32\n")
    out = tmp_path / "r.json"
    assert main(["eval", *FIXED_BASELINES, str(config), "tree.width=2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tree"] == {"kind": "dynamic", "budget": 3, "width": 2, "mean_nodes": report["tree"]["mean_nodes"]}
    config.write_text(f"heads: {heads_dir}\ntree: {{knd: dynamic}}\n")
    assert main(["eval", *FIXED_BASELINES, str(config)]) == 2
    assert "tree.knd: unknown key (did you mean 'kind'?)" in capsys.readouterr().err
    assert (
        main(["eval", *FIXED_BASELINES, "--heads", str(heads_dir), "--prompts", str(prompts), "--dtype", "float16", "--device", "cpu"]) == 2
    )
    assert "float16 on a CPU" in capsys.readouterr().err
    assert (
        main(["eval", *FIXED_BASELINES, "--heads", str(heads_dir), "--prompts", str(prompts), "--temperature", "0.7", "--tree-lookup", "8"])
        == 2
    )
    assert "tree.lookup needs greedy decoding" in capsys.readouterr().err


def test_eval_with_a_lookup_branch_reports_it_and_stays_lossless(heads_dir, prompts, tmp_path):
    out = tmp_path / "report.json"
    code = main(
        [
            "eval", *FIXED_BASELINES, "--dtype", "float32", "--heads", str(heads_dir), "--prompts", str(prompts), "--max-new-tokens", "24",
            "--tree", "dynamic", "--tree-budget", "4", "--tree-lookup", "6", "--out", str(out)
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["tree"]["lookup"] == 6 and report["tree"]["lookup_ngram"] == 2
    assert report["greedy_mismatches"] == 0 and report["hf_generate_mismatches"] == 0
    assert report["tau"] == pytest.approx(1 + sum(report["acceptance_by_depth"]))  # depths past the heads' are counted
    # heads without calibration.json: the fallback answers are kept, so the branch is predicted by replaying them, with its spread
    source = report["tau_predicted_source"]
    assert (
        "48 two-turn conversations of the calibration set" in source
        and "replayed" in source
        and "6-token lookup branch" in source
        and report["tau_predicted_sd"] is not None
    )
    assert "lookup branch of up to 6 copied tokens" in out.with_suffix(".md").read_text()


def test_a_short_mt_bench_run_covers_every_category():
    from draftheads.eval.prompts import load_prompts

    chosen = load_prompts("mt-bench", 16)
    categories = [p.category for p in chosen]
    assert len(chosen) == 16 and len(set(categories)) == 8 and all(categories.count(c) == 2 for c in set(categories))
    assert [p.category for p in load_prompts("mt-bench", 3)] == ["writing", "roleplay", "reasoning"]


def test_the_fallback_calibration_set_is_packaged_and_shares_no_question_with_mt_bench():
    from draftheads.eval.calibrate import FALLBACK_PROMPTS, MATERIAL_CHARS
    from draftheads.eval.prompts import load_prompts

    chosen = load_prompts(*FALLBACK_PROMPTS)
    categories = [p.category for p in chosen]
    assert len(chosen) == 48 and all(categories.count(c) == 6 for c in set(categories)) and all(len(p.turns) == 2 for p in chosen)
    assert set(categories) == {p.category for p in load_prompts("mt-bench")}
    # served first turns often carry material (ShareGPT's upper quartile: 401 characters): one question per category does
    assert sorted(p.category for p in chosen if len(p.turns[0]) > MATERIAL_CHARS) == sorted(set(categories))
    mt_bench = {turn for p in load_prompts("mt-bench") for turn in p.turns}
    assert not mt_bench & {turn for p in load_prompts("calibration") for turn in p.turns}
