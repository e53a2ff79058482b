from __future__ import annotations

import torch

from draftheads.models.backbone import LAST, Backbone, ModelLocation
from draftheads.models.heads.medusa import MedusaConfig, MedusaHeads
from draftheads.train.losses import depth_loss_sums, depth_targets, depth_weights, target_counts


def test_targets_are_t_plus_1_plus_k_inside_the_mask():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]])
    t1 = depth_targets({"input_ids": ids, "loss_mask": mask}, 1)  # position t -> token t+2
    assert t1.positions.tolist() == [0, 1, 2] and t1.tokens.tolist() == [12, 13, 14]
    t3 = depth_targets({"input_ids": ids, "loss_mask": mask}, 3)
    assert t3.positions.tolist() == [0] and t3.tokens.tolist() == [14]
    assert len(depth_targets({"input_ids": ids, "loss_mask": mask}, 5)) == 0


def test_packed_targets_never_cross_into_the_next_document():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    batch = {"input_ids": ids, "loss_mask": torch.ones_like(ids), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]])}
    assert depth_targets(batch, 1).tokens.tolist() == [3, 4, 7]
    assert depth_targets(batch, 2).tokens.tolist() == [4]
    assert target_counts(batch, 3).tolist() == [3.0, 1.0, 0.0]


def test_chunked_loss_and_gradients_equal_the_unchunked_ones(tiny_llama):
    backbone = Backbone(tiny_llama, None, ModelLocation("tiny", "tiny", None, "in-process"))
    heads = MedusaHeads.build(MedusaConfig(num_heads=2, share_lm_head=False), backbone)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, 128, (2, 16))
    batch = {"input_ids": ids, "loss_mask": torch.ones_like(ids)}
    results = []
    for chunk, soft in ((4096, 0.0), (5, 0.0), (4096, 0.5), (5, 0.5)):
        heads.zero_grad()
        with torch.no_grad():
            hidden = backbone.features(ids).features
        sums = depth_loss_sums(heads, heads(hidden, ids), batch, hidden[LAST], backbone.lm_head, soft, chunk)
        sum(sums).backward()
        results.append((torch.stack(sums).detach(), [p.grad.clone() for p in heads.parameters()]))
    for whole, chunked in ((results[0], results[1]), (results[2], results[3])):
        torch.testing.assert_close(whole[0], chunked[0], rtol=1e-5, atol=1e-4)
        for a, b in zip(whole[1], chunked[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_soft_labels_are_zero_when_the_head_matches_the_teacher(tiny_llama):
    """With soft_label_weight 1, a head reproducing the backbone's distribution at t+k has zero loss."""
    backbone = Backbone(tiny_llama, None, ModelLocation("tiny", "tiny", None, "in-process"))
    heads = MedusaHeads.build(MedusaConfig(num_heads=1), backbone)
    ids = torch.randint(0, 128, (1, 10))
    hidden = backbone.features(ids).features
    # A head whose state at t is the backbone's state at t+1 predicts exactly the teacher.
    shifted = torch.cat([hidden[LAST][:, 1:], hidden[LAST][:, -1:]], dim=1)
    from draftheads.models.heads.base import HeadOutput

    sums = depth_loss_sums(
        heads, HeadOutput([shifted]), {"input_ids": ids, "loss_mask": torch.ones_like(ids)}, hidden[LAST], backbone.lm_head, 1.0, 64
    )
    assert abs(sums[0].item()) < 1e-4


def test_depth_weights_decay():
    assert depth_weights(3, 0.8) == [1.0, 0.8, 0.8**2]


def test_decode_positions_leave_out_drafting_an_answers_first_token_and_locate_the_rest():
    from draftheads.train.losses import decode_positions

    # The packed row below: depth 1 trains on t = 0, 1, 2, 5, 6 | 9, 10, 11, 13 (t + 2 in an answer,
    # same conversation). A decode never drafts an answer's first token (offset 0 at t + 2).
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6]])
    batch = {"input_ids": torch.arange(16)[None], "loss_mask": mask, "position_ids": positions}
    rows, cols, turn, offset = decode_positions(batch, 1)
    assert rows.tolist() == [0] * 5 and cols.tolist() == [1, 2, 6, 10, 11]
    assert turn.tolist() == [0, 0, 1, 0, 0] and offset.tolist() == [1, 2, 1, 1, 2]


def test_answer_coordinates_count_turns_per_conversation_and_offsets_per_answer():
    from draftheads.train.losses import answer_coordinates

    # One packed row of two conversations (position ids restart at 0): answers are loss-mask runs.
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6]])
    turn, offset = answer_coordinates({"loss_mask": mask, "position_ids": positions})
    answers = mask[0].bool()
    assert turn[0][answers].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert offset[0][answers].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 0]
    # Unpacked rows (no position ids): one conversation per row.
    turn, _ = answer_coordinates({"loss_mask": mask})
    assert turn[0][answers].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3]


def conversation(generator: torch.Generator, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of a conversation whose answers are `spans` (start, end); each answer
    repeats a stretch of what came before it, so a lookup branch copies part of it correctly."""
    length = spans[-1][1] + 3
    ids = torch.randint(0, 40, (length,), generator=generator).tolist()
    mask = [0] * length
    for start, end in spans:
        ids[start + 2 : start + 8] = ids[start - 9 : start - 3]
        mask[start:end] = [1] * (end - start)
    return ids, mask


def test_training_walks_are_the_walks_calibration_keeps_of_the_same_answers(varied_base, tmp_path):
    # The outside reference: `rank_stats` (what `draftheads calibrate` runs on the base model's answers)
    # on each conversation alone. Training's held-out rows must yield the same walks, in unpacked
    # rows and in a packed row (position ids restart), where the lookup copies from its own
    # conversation only.
    from helpers import random_medusa_heads

    from draftheads.decoding.planning.stats import Answer, rank_stats
    from draftheads.models.draft_model import DraftModel
    from draftheads.train.losses import answer_walks

    RANKS = 50_000  # every rank counted exactly (random heads seldom rank a true token in the top 10)
    draft = DraftModel.from_pretrained(random_medusa_heads(varied_base, tmp_path), device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(3)
    first, second = conversation(generator, [(12, 30), (40, 61)]), conversation(generator, [(14, 33)])
    reference = rank_stats(
        draft, [Answer(first[0][:30], 12, 0, 0), Answer(first[0][:61], 40, 1, 0), Answer(second[0][:33], 14, 0, 0)], RANKS, keep_walks=True
    )
    assert (
        all(max(w.copies) >= 3 for w in reference.walks) and len({r for w in reference.walks for row in w.ranks for r in row}) > 100
    )  # the answers copy: the check below compares something

    def walks_of(ids: list[list[int]], mask: list[list[int]], positions=None):
        batch = {"input_ids": torch.tensor(ids), "loss_mask": torch.tensor(mask)} | (
            {"position_ids": torch.tensor(positions)} if positions else {}
        )
        features = draft.backbone.features(
            batch["input_ids"], None, batch.get("position_ids"), draft.heads.config.feature_layers()
        ).features
        states = draft.heads(features, batch["input_ids"], batch.get("position_ids"), depths=3).states
        return answer_walks(draft.heads, states, batch, draft.backbone.lm_head, 2, RANKS)

    pad = len(first[0]) - len(second[0])
    unpacked = walks_of([first[0], second[0] + [0] * pad], [first[1], second[1] + [0] * pad])
    assert unpacked == reference.walks
    packed = walks_of([first[0] + second[0]], [first[1] + second[1]], [list(range(len(first[0]))) + list(range(len(second[0])))])
    assert [(w.turn, w.length, w.copies, w.proposed) for w in packed] == [(w.turn, w.length, w.copies, w.proposed) for w in reference.walks]
    assert packed == reference.walks  # the first conversation changes neither the second's ranks nor its copies


def test_answer_spans_stay_inside_their_conversation():
    from draftheads.train.losses import answer_spans

    # Conversation 1 (columns 0-5) ends inside a masked run that goes on into conversation 2 (6-11),
    # whose answer starts at its first token (nothing of its own to draft the root from), then a
    # one-token answer (nothing to draft) and a two-token one.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6]])
    assert answer_spans({"loss_mask": mask, "position_ids": positions}) == [(0, 0, 2, 6), (0, 6, 11, 13)]
    assert answer_spans({"loss_mask": mask}) == [(0, 0, 2, 8), (0, 0, 11, 13)]  # unpacked: one conversation
    from draftheads.train.losses import answer_coordinates

    turn, offset = answer_coordinates({"loss_mask": mask, "position_ids": positions})  # the same answers, located
    assert turn[0, 2:8].tolist() == [0, 0, 0, 0, 0, 0] and offset[0, 2:8].tolist() == [0, 1, 2, 3, 0, 1]
    assert turn[0, [9, 11]].tolist() == [1, 2] and offset[0, 11:13].tolist() == [0, 1]
