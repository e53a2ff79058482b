"""Replaying a decode's steps on calibration answers (`decoding/planning/walks.py`): exact steps on
hand-made answers, the copies of the lookup branch, and the walks kept through JSON and `within`."""

from __future__ import annotations

import pytest
import torch

from draftheads.decoding.planning.stats import RankStats
from draftheads.decoding.planning.walks import LOOKUP_CAP, AnswerWalk, lookup_copies, replay

M = 10  # max rank: not in the heads' top


def test_each_step_accepts_the_longest_correct_tree_path_and_skips_what_it_accepted():
    # The tree: rank paths (0), (1), (0, 0), (0, 0, 0). Position i drafts answer offsets i+1...
    paths = {(0,), (1,), (0, 0), (0, 0, 0)}
    ranks = [
        [0, 0, 0],  # step 1 at position 0: 3 accepted, positions 1-3 skipped
        [M, M, M],
        [M, M, M],
        [M, M, M],
        [1, 0, M],  # step 2: (1) is in the tree, (1, 0) is not: 1 accepted
        [M, M, M],
        [0, 1, 0],  # step 3: (0) yes, (0, 1) no: 1
        [M, M, M],
        [M, M, M],  # step 4: 0
        [2, M, M],  # step 5: rank 2 is not in the tree: 0
        [0, 0, 0],  # position 10: the answer's last; a decode of 11 tokens never drafts here
    ]
    walk = AnswerWalk(0, ranks, [0] * len(ranks), len(ranks))
    assert replay([walk], paths, 0, 1, 100).accepted == [3, 1, 1, 0, 0]
    assert replay([walk], paths, 0, 1, 6).accepted == [3, 0]  # 6 new tokens: the second step emits only its bonus
    assert replay([walk], paths, 0, 0, 100).accepted == []  # turn 0 is not below 0 turns


def test_clustered_acceptance_gives_fewer_steps_their_share_than_position_frequencies_say():
    # Half the positions accept 1 and half 0, in two runs: by positions τ = 1.5, but the decode
    # steps over the easy run two positions at a time (τ = 1 + 6 / 17 = 1.35).
    ranks = [[0]] * 12 + [[M]] * 12
    accepted = replay([AnswerWalk(0, ranks, [0] * 24, 24)], {(0,)}, 0, 1, 100).accepted
    assert accepted == [1] * 6 + [0] * 11  # the last position is the answer's end
    assert 1 + sum(accepted) / len(accepted) == 1 + 6 / 17


def test_the_lookup_copy_wins_where_it_is_longer_and_is_cut_to_the_branch_length():
    ranks = [[0, 0], [M, M], [M, M], [M, M], [M, M], [M, M], [M, M], [M, M], [M, M], [M, M]]
    copies = [1, 0, 0, 6, 0, 0, 0, 0, 0, 0]
    proposed = [3, 0, 2, 8, 1, 0, 5, 0, 0, 0]
    walk = AnswerWalk(0, ranks, copies, len(ranks), proposed)
    paths = {(0,), (0, 0)}
    # position 0: heads 2 > copy 1; position 3: copy 6, cut to 4 by a 4-token branch
    assert replay([walk], paths, 4, 1, 100).accepted == [2, 4, 0]
    assert replay([walk], paths, 10, 1, 100).accepted == [2, 5]  # the copy of 6 is cut at the answer's end
    assert replay([walk], paths, 0, 1, 100).accepted == [2] + [0] * 6
    # what the branch adds to each step's tree: the proposal at the step's root, cut to the branch
    assert replay([walk], paths, 4, 1, 100).copied == [3, 4, 0]  # steps at positions 0, 3, 8
    assert replay([walk], paths, 10, 1, 100).copied == [3, 8]
    assert replay([walk], paths, 0, 1, 100).copied == [0] * 7
    assert replay([AnswerWalk(0, ranks, copies, len(ranks))], paths, 10, 1, 100).copied == [0, 0]  # not recorded
    # An answer that ends (EOS) after 5 tokens: the last step verifies the copy past its end but
    # emits nothing of it, and τ counts emitted tokens only, as the engine does.
    ended = AnswerWalk(0, ranks, copies, 5)
    assert replay([ended], paths, 10, 1, 100).accepted == [2, 0]
    assert replay([ended], paths, 0, 1, 100).accepted == [2, 0]


def test_lookup_copies_counts_the_copied_tokens_the_answer_repeats():
    prompt = [7, 1, 2, 3, 4, 9]
    answer = [1, 2, 3, 5, 1, 2]
    ids = prompt + answer
    copies, proposed = lookup_copies(ids, len(prompt), 2)
    # root 1 (context ...9, 1): no bigram "9 1" earlier, unigram "1" -> copies 2, 3, 4, 9: 2, 3 right
    # root 2 (context ... 1, 2): bigram "1 2" at the prompt -> 3, 4, ...: 3 right, 4 wrong (5)
    # root 3: "2 3" -> 4 ...: wrong (5); root 5: no earlier 5, no "3 5": nothing
    # root 1 (again, after 5): "5 1" no; "1" latest earlier at the answer's start -> 2, 3, 5, 1: 1 right, then the answer ends
    # root 2 (the last): nothing left to copy against
    assert copies == [2, 1, 0, 0, 1, 0]
    # proposed: what followed the matched occurrence, up to the root (root 1: 2, 3, 4, 9, 1; the
    # root after 5: 2, 3, 5, 1)
    assert proposed == [5, 5, 5, 0, 4, 4]
    quoted = list(range(1, 41))  # an answer that quotes its 40-token prompt copies as far as the cap
    copies, proposed = lookup_copies(quoted + [99] + quoted, 41, 2)
    assert max(copies) == max(proposed) == LOOKUP_CAP


def test_walks_round_trip_through_json_and_within_keeps_the_turns_a_decode_makes():
    ranks = torch.tensor([[0, 1], [2, 0], [0, 0]])
    stats = RankStats.located(ranks, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 1]))
    stats.walks = [AnswerWalk(0, [[0, 1], [2, 0], [M, M]], [0, 3, 0], 3, [1, 4, 0]), AnswerWalk(1, [[0, 0], [M, M]], [1, 0], 2, [2, 2])]
    stats.lookup_ngram = 2
    again = RankStats.from_json(stats.to_json())
    assert again.to_json() == stats.to_json()
    assert again.walks == stats.walks and again.lookup_ngram == 2
    first_turns = again.within(1, 128)
    assert [w.turn for w in first_turns.walks] == [0]
    assert first_turns.replayed([[0]], 1, 128) == [1]
    assert first_turns.replayed([[0]], 1, 128, lookup=5, lookup_ngram=3) is None  # copies counted for n-gram 2
    assert RankStats.from_ranks(ranks).replayed([[0]], 1, 128) is None  # no walks kept
    assert first_turns.replayed([[0]], 1, 128, lookup=LOOKUP_CAP + 1) is None  # copies are counted up to the cap only
    damaged = stats.to_json()
    damaged["walks"][0]["copies"] = [0]
    with pytest.raises(ValueError, match="3 rank rows, 1 copies and 3 proposals"):
        RankStats.from_json(damaged)
    damaged = stats.to_json()
    damaged["walks"][1]["proposed"] = [2]
    with pytest.raises(ValueError, match="2 rank rows, 2 copies and 1 proposals"):
        RankStats.from_json(damaged)
    assert again.costs_branches()
    older = stats.to_json()  # written before proposals were recorded: replayed, not costed
    for walk in older["walks"]:
        del walk["proposed"]
    assert RankStats.from_json(older).replayed([[0]], 1, 128) == [1] and not RankStats.from_json(older).costs_branches()


def test_training_keeps_a_spread_of_walks_whatever_order_they_were_gathered_in():
    import random

    from draftheads.decoding.planning.walks import AnswerWalk, kept_walks

    walks = [AnswerWalk(i % 2, [[i % 7]] * (3 + i % 5), [i % 3] * (3 + i % 5), 3 + i % 5) for i in range(100)]
    shuffled = random.Random(0).sample(walks, len(walks))
    kept = kept_walks(walks, 10)
    assert len(kept) == 10 and kept == kept_walks(shuffled, 10) and {w.turn for w in kept} == {0, 1}
    assert kept_walks(walks[:5], 10) == kept_walks(walks[:5][::-1], 10) and len(kept_walks(walks[:5], 10)) == 5
