"""The prompt-lookup branch: which tokens it copies, and the exact tree it grafts them into."""

from __future__ import annotations

import pytest
import torch

from draftheads.decoding.drafting import Draft
from draftheads.decoding.lookup import graft, lookup_continuation
from draftheads.decoding.tree import Tree, TreeSpec


def test_the_continuation_follows_the_latest_occurrence_of_the_longest_suffix():
    #          0  1  2  3  4  5  6  7  8  9 10 11
    context = [5, 6, 7, 1, 9, 6, 7, 2, 3, 4, 6, 7]
    # suffix (6, 7) occurs at 1 and 5: the latest (5) is copied
    assert lookup_continuation(context, 3, 2) == [2, 3, 4]
    assert lookup_continuation(context, 10, 2) == [2, 3, 4, 6, 7]  # up to the end of the context
    # the 3-gram (4, 6, 7) never occurred before: the 2-gram is used
    assert lookup_continuation(context, 2, 3) == [2, 3]
    # (9, 6, 7) did, at 4: the longest suffix wins over a later shorter one
    assert lookup_continuation([9, 6, 7, 8, 1, 6, 7, 0, 9, 6, 7], 2, 3) == [8, 1]
    # only the last token matches (at 0): the 1-gram fallback
    assert lookup_continuation([7, 8, 2, 7], 2, 2) == [8, 2]
    assert lookup_continuation([1, 2, 3, 4], 5, 2) == []  # nothing repeats
    assert lookup_continuation([4], 5, 2) == []
    assert lookup_continuation([3, 3], 4, 2) == [3]  # the suffix itself is never its own match


def _dynamic_draft() -> Draft:
    """root 10 -> (20 -> 40, 21), 20 -> 40: tokens [10, 20, 21, 40]."""
    tree = Tree(torch.tensor([-1, 0, 0, 1]), torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 0]))
    return Draft(tree, torch.tensor([10, 20, 21, 40]), scores=torch.tensor([0.0, -0.5, -1.0, -1.5]))


def test_graft_follows_drafted_nodes_then_adds_a_path():
    draft = graft(_dynamic_draft(), [20, 40, 50, 60])
    assert draft.tokens.tolist() == [10, 20, 21, 40, 50, 60]
    assert draft.tree.parents.tolist() == [-1, 0, 0, 1, 3, 4]
    assert draft.tree.depth.tolist() == [0, 1, 1, 2, 3, 4]
    assert draft.tree.rank.tolist() == [0, 0, 1, 0, 0, 0]
    assert draft.scores[:4].tolist() == [0.0, -0.5, -1.0, -1.5] and draft.scores[4:].isneginf().all()
    # verification attends along the grafted path: node 5 sees 0, 1, 3, 4 and itself
    assert draft.tree.ancestor_mask()[5].nonzero().flatten().tolist() == [0, 1, 3, 4, 5]


def test_graft_branches_off_where_the_chain_disagrees():
    draft = graft(_dynamic_draft(), [20, 41, 42])
    assert draft.tokens.tolist() == [10, 20, 21, 40, 41, 42]
    assert draft.tree.parents.tolist() == [-1, 0, 0, 1, 1, 4]
    assert draft.tree.rank.tolist() == [0, 0, 1, 0, 1, 0]  # 41 ranks after the drafted sibling 40
    # a chain disagreeing at once is a new child of the root
    draft = graft(_dynamic_draft(), [30])
    assert draft.tree.parents.tolist() == [-1, 0, 0, 1, 0] and draft.tree.rank.tolist()[-1] == 2
    # a chain the heads drafted entirely adds nothing
    same = _dynamic_draft()
    assert graft(same, [20, 40]).tree.size == 4 and graft(same, []) is same


def test_lookup_settings_are_checked():
    with pytest.raises(ValueError, match="lookup"):
        TreeSpec("none", lookup=-1)
    with pytest.raises(ValueError, match="lookup_ngram"):
        TreeSpec("none", lookup=4, lookup_ngram=0)
    spec = TreeSpec("dynamic", budget=6, width=3, lookup=8, lookup_ngram=3)
    assert TreeSpec.from_description(spec.describe()) == spec
    assert "lookup" not in TreeSpec("dynamic", budget=6, width=3).describe()  # reports of runs without it are unchanged
