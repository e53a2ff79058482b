"""Self-distillation data generation (`draftheads gen-data`) on a tiny base with the demo tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import write_jsonl
from draftheads.data.chat import ChatFormatter
from draftheads.data.distill import answer_groups, record_seed, run_distill
from draftheads.data.generate_hf import GenRequest, HFGenerator
from draftheads.decoding.engine import default_eos
from draftheads.decoding.sampling import SamplingConfig
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.train.config import load_recipe
from draftheads.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def conversation(i: int, turns: int = 1) -> dict:
    messages = []
    for t in range(turns):
        messages += [{"from": "human", "value": f"Question {i}.{t}: tell me about the number {i * 7 + t}."},
                     {"from": "gpt", "value": "An original answer that must be replaced."}]
    return {"id": f"c{i}", "conversations": messages}


def recipe_for(base: Path, data: Path, out: Path, *overrides: str):
    return load_recipe(None, [f"model.base={base}", f"distill.sources=[{{\"path\": \"{data}\"}}]", f"distill.output_dir={out}", *overrides])


def test_answer_groups_drop_original_answers_and_answer_every_user_turn():
    sys_, u1, a1, u2, u3, a2 = (
        {"role": r, "content": r + str(i)} for i, r in enumerate(["system", "user", "assistant", "user", "user", "assistant"])
    )
    assert answer_groups([sys_, u1, a1, u2, u3, a2]) == [[sys_, u1], [u2], [u3]]
    assert answer_groups([u1, u2]) == [[u1], [u2]]  # MT-bench: user turns only, each answered in turn
    assert answer_groups([u1, a1, a2]) == [[u1]]
    assert answer_groups([sys_]) == []


def test_batched_answers_equal_one_at_a_time_and_greedy_equals_hf_generate(varied_base):
    backbone = load_backbone(BackboneConfig(base=str(varied_base)))
    formatter = ChatFormatter(backbone.tokenizer)
    prompts = [[{"role": "user", "content": "hi " * n}] for n in (1, 5, 2, 9, 3)]  # different lengths: padding
    requests = [GenRequest(m, formatter.prompt_ids(m), 12, seed=100 + i) for i, m in enumerate(prompts)]
    eos = default_eos(backbone)
    sampled = SamplingConfig(temperature=0.9, top_p=0.95)
    batched = HFGenerator(backbone, sampled, batch_size=5, eos_token_ids=eos).generate(requests)
    alone = [HFGenerator(backbone, sampled, batch_size=1, eos_token_ids=eos).generate([r])[0] for r in requests]
    assert [a.text for a in batched] == [a.text for a in alone]
    assert len({a.text for a in batched}) == 5  # the seeds make different answers
    other_seeds = HFGenerator(backbone, sampled, 5, eos).generate([GenRequest(r.messages, r.prompt_ids, 12, r.seed + 1) for r in requests])
    assert [a.text for a in other_seeds] != [a.text for a in batched]

    greedy = HFGenerator(backbone, SamplingConfig(), batch_size=5, eos_token_ids=eos).generate(requests)
    for request, answer in zip(requests, greedy):
        out = backbone.model.generate(torch.tensor([request.prompt_ids]), max_new_tokens=12, do_sample=False, eos_token_id=list(eos))
        tokens = out[0, len(request.prompt_ids):].tolist()
        assert answer.text == backbone.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        assert answer.tokens == len(tokens)


def test_every_turn_is_answered_with_the_models_own_earlier_answers(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(0, turns=2), conversation(1, turns=1)])
    recipe = recipe_for(
        varied_base, data, tmp_path / "out", "distill.max_new_tokens=10", "distill.sampling.temperature=0.7", "distill.export_dataset=true"
    )
    result = run_distill(recipe, progress=False)
    assert result.complete and result.counts["conversations"] == 2 and result.counts["answers"] == 3
    records = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["c0", "c1"]
    first = records[0]["conversations"]
    assert [m["from"] for m in first] == ["human", "gpt", "human", "gpt"]
    assert "original answer" not in json.dumps(records)
    # Turn 2 was generated after the model's own turn-1 answer, with the record's turn-2 seed.
    backbone = load_backbone(BackboneConfig(base=str(varied_base)))
    messages = [{"role": "user", "content": first[0]["value"]}, {"role": "assistant", "content": first[1]["value"]},
                {"role": "user", "content": first[2]["value"]}]
    ids = ChatFormatter(backbone.tokenizer).prompt_ids(messages)
    again = HFGenerator(backbone, SamplingConfig(0.7), 1, default_eos(backbone)).generate(
        [GenRequest(messages, ids, 10, record_seed(0, records[0]["source"], 1))]
    )[0]
    assert again.text == first[3]["value"]
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["settings"]["sampling"]["temperature"] == 0.7 and metadata["counts"]["answer_tokens"] == sum(
        sum(r["answer_tokens"]) for r in records
    )
    # The output is training data as it is.
    from draftheads.data.config import SourceConfig
    from draftheads.data.sources import read_source

    for output in ("data.jsonl", "dataset"):  # the JSONL file, and the same as a `datasets` dataset
        convs, _ = read_source(SourceConfig(path=str(tmp_path / "out" / output)), require_assistant=True, skip_invalid=False)
        assert len(convs) == 2 and convs[0].messages[1]["content"] == first[1]["value"] and convs[0].id == "c0"


def test_prompts_longer_than_the_limit_are_skipped_and_counted(varied_base, tmp_path):
    long = {"id": "long", "conversations": [{"from": "human", "value": "word " * 400}]}
    later = conversation(2, turns=2)
    later["conversations"][2]["value"] = "more " * 400  # the second turn no longer fits
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(0), long, later])
    result = run_distill(
        recipe_for(varied_base, data, tmp_path / "out", "distill.max_prompt_tokens=100", "distill.max_new_tokens=4"), progress=False
    )
    assert result.complete
    assert result.counts["skipped"] == {"prompt longer than 100 tokens": 1}
    assert result.counts["conversations"] == 2 and result.counts["cut_short"] == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["c0", "c2"] and len(records[1]["conversations"]) == 2


def test_a_rerun_with_other_settings_is_refused_and_a_finished_run_is_not_redone(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(0)])
    run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4"), progress=False)
    before = (tmp_path / "out" / "data.jsonl").read_text()
    again = run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4"), progress=False)
    assert again.generated_records == 0 and again.complete and (tmp_path / "out" / "data.jsonl").read_text() == before
    with pytest.raises(ConfigError, match=r"made with other settings \(max_new_tokens: 4 -> 5\)"):
        run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=5"), progress=False)


def test_changing_a_source_limit_resumes_the_same_output(varied_base, tmp_path):
    """Raising `limit` answers only the new records; lowering it finishes with the first ones."""
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(i) for i in range(4)])

    def run(limit: int):
        return run_distill(
            recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4", f"distill.sources.0.limit={limit}"), progress=False
        )

    assert run(2).generated_records == 2
    first = _records(tmp_path / "out")
    grown = run(4)
    assert grown.generated_records == 2 and grown.complete
    records = _records(tmp_path / "out")
    assert [r["id"] for r in records] == ["c0", "c1", "c2", "c3"] and records[:2] == first
    shrunk = run(1)
    assert shrunk.generated_records == 0 and _records(tmp_path / "out") == first[:1]
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["settings"]["sources"][0]["limit"] == 1


def test_a_spent_time_budget_writes_what_is_answered_and_a_later_run_continues(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(i) for i in range(4)])

    def run(*extra: str):
        return run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4", *extra), progress=False)

    run("distill.sources.0.limit=2")
    first = _records(tmp_path / "out")
    spent = run("distill.max_minutes=1e-9")  # spent before the first conversation could begin
    assert spent.generated_records == 0 and spent.complete and _records(tmp_path / "out") == first
    assert spent.counts["inputs"] == 4 and spent.counts["not_reached"] == 2 and spent.counts["conversations"] == 2
    rest = run()
    assert rest.generated_records == 2 and rest.counts["not_reached"] == 0 and _records(tmp_path / "out")[:2] == first
    assert [r["id"] for r in _records(tmp_path / "out")] == ["c0", "c1", "c2", "c3"]


def _gen_data(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["draftheads", "gen-data", "--base", str(base), "--data", str(data), "--out", str(out),
            "distill.max_new_tokens=16", "distill.sampling.temperature=0.8", "distill.batch_size=4", "distill.chunk_size=4", *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]


def test_a_chunk_cut_short_is_redone_whole_and_equals_the_uninterrupted_run(varied_base, tmp_path, monkeypatch):
    """What a kill leaves, made exactly: chunk 0 written, chunk 1 half written, a torn last line. The
    rerun answers chunk 1 with the same batch-mates as before, so its answers are bit for bit those of
    the run that was never interrupted, and only the missing records are appended."""
    # Prompts of many lengths, in bf16: padding then changes the numerics, so batch-mates matter.
    convs = [conversation(i, turns=1 + i % 3) for i in range(10)]
    for i, conv in enumerate(convs):
        conv["conversations"][0]["value"] += " tell me more" * (i * 7 % 23)
    data = write_jsonl(tmp_path / "p.jsonl", convs)
    settings = (
        "distill.max_new_tokens=24",
        "distill.sampling.temperature=0.8",
        "distill.batch_size=4",
        "distill.chunk_size=4",
        "model.dtype=bfloat16",
    )
    calls: list[list[int]] = []  # the seeds of each generate call: its batch-mates
    real_generate = HFGenerator.generate
    monkeypatch.setattr(
        HFGenerator, "generate", lambda self, requests, *a: calls.append([r.seed for r in requests]) or real_generate(self, requests, *a)
    )
    run_distill(recipe_for(varied_base, data, tmp_path / "ref", *settings), progress=False)
    reference, reference_calls = _records(tmp_path / "ref"), calls[:]
    calls.clear()

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    shutil.copy(tmp_path / "ref" / "metadata.json", out / "metadata.json")
    kept = [line for line in (tmp_path / "ref" / "shards" / "rank-00000.jsonl").read_text().splitlines()
            if json.loads(line)["id"] in {"c0", "c1", "c2", "c3", "c4", "c6"}]  # chunk 0, and c4 and c6 of chunk 1
    (out / "shards" / "rank-00000.jsonl").write_text("\n".join(kept) + '\n{"key": "torn by a kill", "conversa')
    resumed = run_distill(recipe_for(varied_base, data, out, *settings), progress=False)
    assert resumed.generated_records == 4 and resumed.complete  # c5, c7 (chunk 1 redone whole), c8, c9
    assert _records(out) == reference
    keys = [json.loads(line)["key"] for line in (out / "shards" / "rank-00000.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10
    chunk_0 = {record_seed(0, r["key"], turn) for r in map(json.loads, kept) if r["id"] in {"c0", "c1", "c2", "c3"} for turn in range(3)}
    assert calls == [c for c in reference_calls if not chunk_0 & set(c)]  # chunks 1 and 2 asked exactly as before


def test_a_resume_with_other_batching_is_refused(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(0)])
    run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4"), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(batching: .*'chunk_size': 128.* -> .*'chunk_size': 3"):
        run_distill(recipe_for(varied_base, data, tmp_path / "out", "distill.max_new_tokens=4", "distill.chunk_size=3"), progress=False)


def test_kill_9_then_resume_loses_nothing_and_duplicates_nothing(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(i, turns=1 + i % 3) for i in range(24)])
    reference = subprocess.run(_gen_data(varied_base, data, tmp_path / "ref"), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "out"
    shard = out / "shards" / "rank-00000.jsonl"
    process = subprocess.Popen(_gen_data(varied_base, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # No deadline to race: wait for the run to be a few conversations in (or to end by itself).
    while process.poll() is None and (not shard.exists() or shard.read_text().count("\n") < 6):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = shard.read_text().count("\n")
    assert 6 <= finished < 24, f"the kill must land mid-run ({finished} of 24 written)"
    assert not (out / "data.jsonl").exists()
    with shard.open("a") as f:
        f.write('{"key": "torn by a kill", "conversa')  # what a kill inside a write would leave
    resumed = subprocess.run(_gen_data(varied_base, data, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"this run: {24 - finished} conversations" in resumed.stdout
    records = _records(out)
    assert [r["id"] for r in records] == [f"c{i}" for i in range(24)]  # every input once, in input order
    assert records == _records(tmp_path / "ref")  # fixed chunks, per-record seeds: identical to the uninterrupted run
    keys = [json.loads(line)["key"] for line in shard.read_text().splitlines()]  # every line is whole JSON
    assert "torn by a kill" not in keys and len(keys) == len(set(keys)) == 24


@pytest.mark.slow  # two processes under accelerate launch: about 17 s
def test_two_processes_split_the_inputs_and_merge_them_exactly_once(varied_base, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [conversation(i, turns=1 + i % 2) for i in range(9)])
    single = subprocess.run(_gen_data(varied_base, data, tmp_path / "one"), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    double = subprocess.run(
        _gen_data(varied_base, data, tmp_path / "two", "--accelerate-config", "cpu-2proc"),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    shards = sorted((tmp_path / "two" / "shards").glob("*.jsonl"))
    assert [len(s.read_text().splitlines()) for s in shards] == [5, 4]
    assert _records(tmp_path / "two") == _records(tmp_path / "one")


def test_cli_errors_name_the_file_and_record(varied_base, tmp_path, capsys):
    from draftheads.scripts.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(conversation(0)) + "\n" + '{"conversations": [{"from": "narrator", "value": "x"}]}\n')
    code = main(["gen-data", "--base", str(varied_base), "--data", str(bad), "--out", str(tmp_path / "o"), "distill.skip_invalid=false"])
    assert code == 2
    assert f"{bad}: line 2: field 'conversations[0].from': unknown role 'narrator'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data.jsonl").exists()
