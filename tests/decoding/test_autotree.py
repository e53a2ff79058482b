"""`--tree auto`: expected τ from calibrated rank paths, costs measured on the machine, and the
choice of the tree with the highest expected tokens per second."""

from __future__ import annotations

from collections import Counter

import pytest

from draftheads.decoding.autotree import TreeCosts, choose_auto_tree, expected_tau, measure_costs
from draftheads.decoding.calibration import RankStats


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


def test_costs_are_measured_for_every_candidate(tiny_llama, demo_tokenizer):
    from draftheads.models.backbone import Backbone, ModelLocation
    from draftheads.models.draft_model import DraftModel
    from draftheads.models.heads.hydra import HydraConfig

    draft = DraftModel.new(Backbone(tiny_llama, demo_tokenizer, ModelLocation("t", "t", None, "t")), HydraConfig(num_heads=3))
    measured = measure_costs(draft, budgets=(1, 4), widths=(1, 2), prefix_length=16)
    assert sorted(measured.verify) == [1, 2, 5] and sorted(measured.draft) == [(1, 1), (4, 1), (4, 2)]
    assert all(v > 0 for v in [*measured.verify.values(), *measured.draft.values()])


def test_a_decode_is_predicted_from_the_positions_it_makes(tmp_path):
    import torch

    from draftheads.decoding.calibration import CALIBRATION_NAME, calibration_json, read_calibration

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
    assert shaped.positions == 8 and "rerun bench/recalibrate.py" in source
