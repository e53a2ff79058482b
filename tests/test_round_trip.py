"""Nothing written is lost when read back: every JSON-lines record gen-data, cache-features and eval
write comes back whole through the reader that consumes it, and the counts reconcile per file.

The input is as awkward as text gets: every Unicode line and paragraph separator, every control
character, astral characters, "\\r\\n" line endings and a last line without a newline (`helpers`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from draftheads.data.config import SourceConfig
from draftheads.data.dataset import build_datasets
from draftheads.data.distill import run_distill
from draftheads.data.features import INDEX, build_feature_cache, cached_dropped, open_feature_cache
from draftheads.data.generate_hf import GenAnswer
from draftheads.data.sources import read_source
from draftheads.decoding.tree import TreeSpec
from draftheads.eval.config import EvalConfig
from draftheads.eval.runner import read_partial, run_eval
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.scripts.cli import main
from draftheads.train.config import load_recipe
from draftheads.utils.append_log import read_records
from helpers import AWKWARD_TEXT, fixed_baselines, write_awkward_jsonl

N = 3


def question(i: int) -> str:
    return f"q{i} {AWKWARD_TEXT}"


def answer(text: str) -> str:
    return f"re: {text[::-1]}"  # reversed: an answer unlike its question, just as awkward


def lines_written(path: Path) -> int:
    """Records a writer put in a JSON-lines file: each one ends in the only raw "\\n" it holds."""
    return path.read_bytes().count(b"\n")


def read_all(path: Path):
    return read_source(SourceConfig(path=str(path)), require_assistant=True, skip_invalid=True)


class EchoGenerator:
    """Answers each request with its question reversed: no model, and every character survives."""

    def generate(self, requests, on_tokens=None):
        return [GenAnswer(text=answer(r.messages[-1]["content"]), tokens=1, finish_reason="stop") for r in requests]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_base, demo_tokenizer):
    """gen-data output (shards, data.jsonl, exported dataset) of an awkward source, and the expected
    conversations."""
    folder = tmp_path_factory.mktemp("round-trip")
    records = [{"id": f"c{i}\u2028", "conversations": [{"from": "human", "value": question(i)}]} for i in range(N)]
    source = write_awkward_jsonl(folder / "prompts.jsonl", records)
    recipe = load_recipe(None, [f"model.base={tiny_base}", f"distill.sources=[{{path: {json.dumps(str(source))}}}]",
                                f"distill.output_dir={folder / 'out'}", "distill.export_dataset=true"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("draftheads.data.distill._make_generator", lambda *_: (EchoGenerator(), demo_tokenizer, 1 << 30))
        result = run_distill(recipe, progress=False)
    assert result.complete and result.counts["inputs"] == N and result.counts["dropped"] == {}
    expected = [[{"role": "user", "content": question(i)}, {"role": "assistant", "content": answer(question(i))}] for i in range(N)]
    return folder / "out", expected


def test_gen_data_shards_data_jsonl_and_exported_dataset_read_back_whole(distilled):
    out, expected = distilled
    shard = out / "shards" / "rank-00000.jsonl"
    assert lines_written(shard) == len(list(read_records(shard))) == N
    data = out / "data.jsonl"
    written = json.loads((out / "metadata.json").read_text())["counts"]["conversations"]
    convs, report = read_all(data)
    assert written == lines_written(data) == report.records == report.kept == N and not report.dropped
    assert [c.messages for c in convs] == expected and [c.id for c in convs] == [f"c{i}\u2028" for i in range(N)]
    exported, report = read_all(out / "dataset")
    assert report.records == report.kept == N and [c.messages for c in exported] == expected


def test_cache_features_rows_read_back_whole(distilled, tiny_base, demo_tokenizer, tmp_path):
    out, expected = distilled
    recipe = load_recipe(None, [f"model.base={tiny_base}", f"data.sources=[{{path: {json.dumps(str(out / 'data.jsonl'))}}}]",
                                "data.max_length=512", "data.eval_fraction=0.34", "data.skip_invalid=true",
                                f"data.feature_cache.path={tmp_path / 'cache'}", "heads.head_type=medusa", "heads.num_heads=2"])
    logged: list[str] = []
    folder = build_feature_cache(recipe, progress=False, log=logged.append)
    assert not any(line.startswith("warning") for line in logged) and cached_dropped(recipe) == {}
    train_rows, held_rows, stats, _ = build_datasets(recipe.data, demo_tokenizer, progress=False)
    assert stats.conversations == N and stats.truncated == 0 and stats.dropped() == {}  # every record gen-data wrote
    written = sum(split["rows"] for split in json.loads((folder / INDEX).read_text())["splits"].values())
    train_cached, held_cached, _ = open_feature_cache(recipe, load_backbone(recipe.model))
    cached = [train_cached[i] for i in range(len(train_cached))] + [held_cached[i] for i in range(len(held_cached))]
    built = list(train_rows.rows) + list(held_rows.rows)
    assert written == len(cached) == len(built) == N
    assert [(c.input_ids, c.loss_mask) for c in cached] == [(b.input_ids, b.loss_mask) for b in built]
    texts = [demo_tokenizer.decode(c.input_ids) for c in cached]
    # Each row holds its whole conversation, as the tokenizer renders it (the demo vocabulary has no
    # token for a few control bytes, \x04 among them, and drops them: that is the tokenizer's loss).
    as_tokenized = lambda text: demo_tokenizer.decode(demo_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for messages in expected:
        assert sum(all(as_tokenized(m["content"]) in t for m in messages) for t in texts) == 1


def test_eval_partial_records_read_back_whole(tiny_base, tmp_path):
    torch.manual_seed(0)
    draft = DraftModel.new(load_backbone(BackboneConfig(base=str(tiny_base)), "cpu"), MedusaConfig(num_heads=2))
    heads = draft.save_pretrained(tmp_path / "heads")
    ids = [f"q{i}\u2028\x85" for i in range(N)]
    prompts = write_awkward_jsonl(tmp_path / "prompts.jsonl", [{"question_id": ids[i], "turns": [question(i)]} for i in range(N)])
    options = EvalConfig(
        heads=str(heads),
        prompts=str(prompts),
        **fixed_baselines(),
        max_new_tokens=2,
        tree=TreeSpec("dynamic", budget=2),
        device="cpu",
        dtype="float32",
    )
    report = run_eval(options, tmp_path / "report.json", progress=False)
    partial = tmp_path / "report.json.partial.jsonl"
    before = partial.read_bytes()
    records = read_partial(partial, options.fingerprint())
    assert lines_written(partial) == 1 + len(records) == 1 + N and report.n_prompts == N  # header + one per prompt
    assert [r["id"] for r in records] == ids and partial.read_bytes() == before  # nothing taken for a torn line


def test_records_dropped_by_skip_invalid_are_reported_at_the_end_of_each_run(tiny_base, demo_tokenizer, tmp_path, capsys, monkeypatch):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    source = write_awkward_jsonl(tmp_path / "p.jsonl", [good, good])
    source.write_bytes(source.read_bytes() + b'\r\n{"conversations": [\r\n{"conversations": "x"}')  # 2 bad of 4
    note = (f"2 records dropped ({source}: 1 malformed JSON, 1 expected a list of turns, got str); "
            "skip_invalid: false stops at the first invalid one")
    monkeypatch.setattr("draftheads.data.distill._make_generator", lambda *_: (EchoGenerator(), demo_tokenizer, 1 << 30))
    assert main(["gen-data", "--base", str(tiny_base), "--data", str(source), "--out", str(tmp_path / "gen")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:-1] == [f"warning: {note}", "2 of 2 conversations, 2 answers (2 tokens; finish reasons {'stop': 2}); skipped: none"]
    assert json.loads((tmp_path / "gen" / "metadata.json").read_text())["counts"]["dropped"] == {
        str(source): {"malformed JSON": 1, "expected a list of turns, got str": 1}
    }
    assert main(["cache-features", "--base", str(tiny_base), "--data", str(source), "--out", str(tmp_path / "cache"),
                 "data.skip_invalid=true", "data.max_length=64", "heads.head_type=medusa", "heads.num_heads=2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == f"warning: {note}" and printed[-1].startswith("wrote ")
