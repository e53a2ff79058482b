"""`--tree auto`: expected τ from calibrated rank paths, costs measured on the machine, and the
choice of the tree with the highest expected tokens per second."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from draftheads.decoding.planning.costs import TreeCosts, measure_costs
from draftheads.decoding.planning.search import choose_auto_tree, expected_tau
from draftheads.decoding.planning.stats import RankStats


def stats() -> RankStats:
    # 100 positions: depth 1 right at rank 0 in 60, rank 1 in 20; depth 2 after (0,) in 30 ...
    counts = Counter({(0,): 60, (1,): 20, (2,): 5, (0, 0): 30, (0, 1): 10, (1, 0): 8, (0, 0, 0): 15})
    return RankStats(100, counts, [[0.6, 0.8, 0.85], [0.3, 0.4, 0.4], [0.15, 0.15, 0.15]])


def test_expected_tau_takes_the_best_paths_within_the_width():
    s = stats()
    assert expected_tau(s, 1, 1) == pytest.approx(1.6)
    assert expected_tau(s, 2, 1) == pytest.approx(1 + 0.6 + 0.3)  # width 1: (1,) is not allowed beside (0,)
    assert expected_tau(s, 3, 2) == pytest.approx(1 + 0.6 + 0.3 + 0.2)  # (0, 0) 30 beats (1,) 20
    assert expected_tau(s, 4, 2) == pytest.approx(1 + 0.6 + 0.3 + 0.2 + 0.15)  # (0,0,0) 15 beats (0,1) 10
    assert s.best_paths(3, 1) == [[0], [0, 0], [0, 0, 0]]


def costs(per_node: float, draft: float = 0.001) -> TreeCosts:
    verify = {n: 0.040 + per_node * (n - 1) for n in range(1, 34)}
    return TreeCosts(verify, {(b, w): draft * b for b in (1, 2, 4, 8, 16) for w in (1, 2, 4) if w <= b})


def test_cheap_nodes_buy_a_bigger_tree_and_dear_nodes_a_smaller_one():
    cheap = choose_auto_tree(stats(), costs(0.0001), "test")
    dear = choose_auto_tree(stats(), costs(0.02), "test")
    assert cheap.spec.kind == dear.spec.kind == "dynamic"
    assert dear.chosen.budget < cheap.chosen.budget
    assert cheap.expected_speedup > dear.expected_speedup > 1
    assert "tree auto: dynamic tree, budget" in cheap.lines()[0] and cheap.to_json()["costs"]["verify_ms_by_nodes"]["1"] == 40.0


def test_heads_that_cannot_pay_for_a_tree_fall_back_to_autoregressive_decoding():
    hopeless = RankStats(100, Counter({(0,): 2}), [[0.02]])
    choice = choose_auto_tree(hopeless, costs(0.01), "test")
    assert choice.spec.kind == "none" and choice.expected_speedup == 1.0
    assert "no tree is expected to pay" in choice.lines()[0]


def test_a_saved_static_tree_is_one_candidate_among_the_dynamic_ones():
    chain = [[0], [0, 0], [0, 0, 0]]  # a chain's τ 1 + 0.6 + 0.3 + 0.15, the best 3-node dynamic tree's 1 + 0.6 + 0.3 + 0.2
    cheap_chain, dear_chain = costs(0.0001), costs(0.0001)
    cheap_chain.draft_depths = [0.0, 0.0, 0.0]  # drafting a chain costs nothing: it beats every dynamic tree that drafts
    dear_chain.draft_depths = [1.0, 1.0, 1.0]
    taken = choose_auto_tree(stats(), cheap_chain, "test", static=chain)
    assert taken.spec.kind == "static" and taken.spec.paths == chain and taken.chosen.expected_tau == pytest.approx(2.05)
    assert "static tree of 3 nodes (3 deep)" in taken.lines()[0] and taken.to_json()["paths"] == chain
    passed = choose_auto_tree(stats(), dear_chain, "test", static=chain)
    assert passed.spec.kind == "dynamic" and any(c.paths == chain for c in passed.candidates)


def test_costs_are_measured_for_every_candidate(tiny_llama, demo_tokenizer):
    from draftheads.models.backbone import Backbone, ModelLocation
    from draftheads.models.draft_model import DraftModel
    from draftheads.models.heads.hydra import HydraConfig

    draft = DraftModel.new(Backbone(tiny_llama, demo_tokenizer, ModelLocation("t", "t", None, "t")), HydraConfig(num_heads=3))
    measured = measure_costs(draft, budgets=(1, 4), widths=(1, 2), prefix_length=16)
    assert sorted(measured.verify) == [1, 2, 5] and sorted(measured.draft) == [(1, 1), (4, 1), (4, 2)]
    assert all(v > 0 for v in [*measured.verify.values(), *measured.draft.values()])
    with_branches = measure_costs(draft, budgets=(1, 4), widths=(1,), prefix_length=16, lookups=(4, 8))
    assert sorted(with_branches.verify) == [1, 2, 5, 9, 13] and sorted(with_branches.lookup) == [
        4,
        8,
    ]  # the largest tree + half and all of the longest branch
    assert all(v > 0 for v in with_branches.lookup.values())
    with_static = measure_costs(draft, budgets=(1,), widths=(1,), prefix_length=16, static_nodes=6)
    assert sorted(with_static.verify) == [1, 2, 7] and len(with_static.draft_depths) == 3 and all(v > 0 for v in with_static.draft_depths)


def test_a_decode_is_predicted_from_the_positions_it_makes(tmp_path):
    from draftheads.decoding.planning.stats import calibration_json, read_calibration
    from draftheads.models.heads_folder import CALIBRATION_NAME

    # Early answer tokens of turns 0-1 are drafted badly (rank 5), late ones and third turns well (rank 0).
    turns = torch.tensor([0, 0, 1, 1, 0, 1, 2, 2])
    offsets = torch.tensor([3, 40, 10, 31, 200, 130, 5, 300])
    ranks = torch.tensor([[5, 5], [5, 5], [5, 5], [5, 5], [0, 0], [0, 9], [0, 0], [0, 0]])
    stats = RankStats.located(ranks, turns, offsets)
    assert stats.positions == 8 and stats.path_counts[(0,)] == 4 and stats.path_counts[(0, 0)] == 3
    assert set(stats.cells) == {(0, 0), (0, 1), (1, 0), (0, 6), (1, 4), (2, 0), (2, 9)}  # (turn, offset // 32)
    early = stats.within(2, 64)  # 2 turns x 64 new tokens: offsets 3, 40, 10, 31
    assert early.positions == 4 and early.path_counts[(0,)] == 0 and early.path_counts[(5,)] == 4
    assert early.depth_topk[0][5] == 1.0 and early.depth_topk[0][0] == 0.0
    assert stats.within(2, 256).positions == 6 and stats.within(3, 512).positions == 8  # the last turn cell holds every later turn
    assert early.probability((0,)) == 0.0 and stats.probability((0,)) == 0.5
    # Through the file: written as training writes it, read back for a decode's shape.
    (tmp_path / CALIBRATION_NAME).write_text(calibration_json(stats, "held-out rows"))
    whole, source = read_calibration(tmp_path)
    assert whole.path_counts == stats.path_counts and whole.cells.keys() == stats.cells.keys() and "8 positions" in source
    shaped, source = read_calibration(tmp_path, 2, 64)
    assert shaped.path_counts == early.path_counts and "2 turn(s) x 64 new tokens makes (4 positions" in source
    # No cell fits (no first turns here), or a file from before cells: all positions, and it says so.
    assert RankStats.located(ranks[6:], turns[6:], offsets[6:]).within(2, 64) is None
    (tmp_path / CALIBRATION_NAME).write_text(calibration_json(RankStats.located(ranks[6:], turns[6:], offsets[6:]), "held-out rows"))
    shaped, source = read_calibration(tmp_path, 2, 64)
    assert shaped.positions == 2 and "all positions, not only those" in source and "no position lies in them" in source
    (tmp_path / CALIBRATION_NAME).write_text(calibration_json(RankStats.from_ranks(ranks), "held-out rows"))
    shaped, source = read_calibration(tmp_path, 2, 64)
    assert shaped.positions == 8 and "rerun `draftheads calibrate`" in source


def test_verify_cost_between_and_past_the_measured_sizes_is_linear():
    measured = TreeCosts({1: 0.040, 5: 0.048, 9: 0.060})
    assert measured.verify_seconds(5) == 0.048
    assert measured.verify_seconds(3) == pytest.approx(0.044)
    assert measured.verify_seconds(7) == pytest.approx(0.054)
    assert measured.verify_seconds(13) == pytest.approx(0.072)  # the last slope, 3 ms a node


def walked(copies: int, proposed: int) -> RankStats:
    """Calibration whose answers the heads draft right at depth 1 in every other position, and where
    the lookup proposes `proposed` tokens at every position, `copies` of them right."""
    from draftheads.decoding.planning.walks import AnswerWalk

    ranks = [[0] if i % 2 == 0 else [9] for i in range(64)]
    s = RankStats.from_ranks(torch.tensor(ranks))
    s.walks, s.lookup_ngram = [AnswerWalk(0, ranks, [copies] * 64, 64, [proposed] * 64)], 2
    return s


def branch_costs(per_node: float) -> TreeCosts:
    verify = {n: 0.040 + per_node * (n - 1) for n in (1, 2, 3, 5, 17, 25)}
    return TreeCosts(verify, {(1, 1): 0.001, (2, 1): 0.002}, {8: 0.0005, 16: 0.001})


def test_the_branch_is_chosen_where_its_copies_pay_for_the_nodes_it_adds():
    # Copies right 6 tokens at a time: the 8-token branch (the cheaper one) pays at 1 ms a node.
    quoting = choose_auto_tree(walked(6, 8), branch_costs(0.001), "test", (1, 64), (0, 8, 16))
    assert quoting.chosen.lookup == 8 and quoting.spec.lookup == 8 and quoting.spec.lookup_ngram == 2
    steps = walked(6, 8).replay_steps([[0]] if quoting.chosen.budget else [], 1, 64, 8)
    assert quoting.chosen.expected_tau == pytest.approx(1 + sum(steps.accepted) / len(steps.accepted))
    assert "8-token lookup branch" in quoting.lines()[0] and quoting.to_json()["lookup"] == 8
    # Proposals that are always wrong add nodes and nothing else: no branch.
    wrong = choose_auto_tree(walked(0, 16), branch_costs(0.001), "test", (1, 64), (0, 8, 16))
    assert wrong.chosen.lookup == 0 and wrong.spec.lookup == 0
    # 7 tokens a step do not pay for 8 nodes at 200 ms each when the heads make 2 a step at 41 ms.
    dear = choose_auto_tree(walked(6, 8), branch_costs(0.200), "test", (1, 64), (0, 8, 16))
    assert dear.chosen.lookup == 0
    # Without a decode shape, with other n-gram copies, or with walks that never recorded the
    # proposals, branches are not weighed at all.
    unrecorded = walked(6, 8)
    unrecorded.walks[0].proposed = None
    for stats_, shape, ngram, why in [
        (walked(6, 8), None, 2, "kept no answers"),
        (walked(6, 8), (1, 64), 3, "n-gram 2, not 3"),
        (unrecorded, (1, 64), 2, "do not record what the lookup proposes"),
    ]:
        choice = choose_auto_tree(stats_, branch_costs(0.001), "test", shape, (0, 8), ngram=ngram)
        assert {c.lookup for c in choice.candidates} == {0} and why in choice.lines()[-1]
    assert "no lookup branch" not in " ".join(choose_auto_tree(walked(6, 8), branch_costs(0.001), "test", None).lines())  # none asked for
    # A branch longer than the walks count copies for (LOOKUP_CAP) is not weighed, and says why.
    costs_ = branch_costs(0.001)
    costs_.lookup[40] = 0.002
    long = choose_auto_tree(walked(6, 8), costs_, "test", (1, 64), (0, 40))
    assert {c.lookup for c in long.candidates} == {0} and "at most 32 tokens, not 40" in long.lines()[-1]
