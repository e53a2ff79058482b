from __future__ import annotations

import pytest
import torch

from helpers import write_jsonl
from draftheads.data.collate import Collator
from draftheads.data.config import DataConfig, SourceConfig
from draftheads.data.dataset import TOKENISING, Row, build_datasets, pack_rows, split_held_out
from draftheads.models.backbone import LAST, Backbone, ModelLocation
from draftheads.utils.errors import DataError


def conversation(i: int, words: int) -> dict:
    return {
        "id": f"c{i}",
        "conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": " ".join(["word"] * words)}],
    }


def test_build_dataset_truncates_and_counts(demo_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [conversation(0, 5), conversation(1, 200), {"conversations": []}])
    cfg = DataConfig(sources=[SourceConfig(path=str(path))], max_length=64, skip_invalid=True, eval_fraction=0)
    dataset, _, stats, _ = build_datasets(cfg, demo_tokenizer, progress=False)
    assert len(dataset) == 2 and stats.truncated == 1 and stats.lengths[1] == 64
    assert stats.sources[0].dropped == {"conversation has no assistant turn to train on": 1}
    assert stats.assistant_tokens == sum(sum(r.loss_mask) for r in dataset.rows)
    text = "\n".join(stats.lines())
    assert "3 records read, 2 kept, 1 dropped" in text and "truncated to max_length: 1" in text


def test_conversation_whose_replies_are_all_past_max_length_is_skipped(demo_tokenizer, tmp_path):
    long_prompt = {"conversations": [{"from": "human", "value": "x " * 300}, {"from": "gpt", "value": "ok"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [long_prompt, conversation(1, 3)])
    dataset, _, stats, _ = build_datasets(
        DataConfig(sources=[SourceConfig(path=str(path))], max_length=48, eval_fraction=0), demo_tokenizer, progress=False
    )
    assert len(dataset) == 1 and stats.skipped == {"no assistant token within max_length": 1}


def test_dropped_counts_every_record_left_out_by_source_and_reason(demo_tokenizer, tmp_path):
    long_prompt = {"conversations": [{"from": "human", "value": "x " * 300}, {"from": "gpt", "value": "ok"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [long_prompt, "{", conversation(1, 3), {"conversations": []}])
    cfg = DataConfig(sources=[SourceConfig(path=str(path))], max_length=48, skip_invalid=True, eval_fraction=0)
    _, _, stats, _ = build_datasets(cfg, demo_tokenizer, progress=False)
    assert stats.dropped() == {
        str(path): {"malformed JSON": 1, "conversation has no assistant turn to train on": 1},
        TOKENISING: {"no assistant token within max_length": 1},
    }


def test_no_usable_conversation_is_an_error(demo_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": []}])
    with pytest.raises(DataError, match="no usable conversations in"):
        build_datasets(DataConfig(sources=[SourceConfig(path=str(path))], skip_invalid=True), demo_tokenizer, progress=False)


def test_packing_never_splits_a_document():
    rows = [Row([1] * 5, [1] * 5), Row([2] * 4, [0] * 4), Row([3] * 3, [1] * 3), Row([4] * 8, [1] * 8)]
    packed = pack_rows(rows, block=10)
    assert [r.input_ids for r in packed] == [[1] * 5 + [2] * 4, [3] * 3, [4] * 8]
    assert packed[0].position_ids == list(range(5)) + list(range(4))
    assert sum(len(r.input_ids) for r in packed) == 20


def test_collator_pads_unpacked_rows_with_an_attention_mask():
    batch = Collator(pad_token_id=9)([Row([1, 2, 3], [0, 1, 1]), Row([4], [1])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert "position_ids" not in batch


def test_collator_gives_packed_padding_its_own_positions():
    batch = Collator(pad_token_id=0, pad_to_multiple_of=4)([Row([5, 6, 7], [1, 1, 1], [0, 1, 0])])
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0]] and "attention_mask" not in batch
    assert batch["loss_mask"].tolist() == [[1, 1, 1, 0]]


def test_packed_row_gives_the_same_hidden_states_as_separate_documents(tiny_llama):
    """Documents packed into one row must not attend to each other."""
    backbone = Backbone(tiny_llama, None, ModelLocation("tiny", "tiny", None, "in-process"))
    torch.manual_seed(1)
    docs = [torch.randint(0, 128, (n,)).tolist() for n in (7, 4, 6)]
    packed = pack_rows([Row(d, [1] * len(d)) for d in docs], block=32)
    assert len(packed) == 1
    batch = Collator(pad_token_id=0)(packed + [Row([1, 2], [1, 1], [0, 1])])
    together = backbone.features(batch["input_ids"], position_ids=batch["position_ids"]).features[LAST][0]
    start = 0
    for doc in docs:
        alone = backbone.features(torch.tensor([doc])).features[LAST][0]
        torch.testing.assert_close(together[start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        start += len(doc)


def test_held_out_split_is_by_conversation_and_seeded():
    rows = [Row([i], [1]) for i in range(50)]
    train, held = split_held_out(rows, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert sorted(r.input_ids[0] for r in train + held) == list(range(50))
    assert [r.input_ids for r in split_held_out(rows, 0.1, seed=3)[1]] == [r.input_ids for r in held]
    assert len(split_held_out(rows[:3], 0.01, seed=0)[1]) == 1  # at least one when asked for


def test_build_datasets_holds_out_before_packing(demo_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [conversation(i, 3) for i in range(20)])
    cfg = DataConfig(sources=[SourceConfig(path=str(path))], max_length=256, packing=True, eval_fraction=0.25)
    train, held, stats, _ = build_datasets(cfg, demo_tokenizer, progress=False)
    assert stats.held_out == 5
    docs = lambda ds: sum(r.position_ids.count(0) for r in ds.rows)
    assert docs(train) == 15 and docs(held) == 5
