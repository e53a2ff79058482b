from __future__ import annotations

import pytest
import torch

from draftheads.decoding.acceptance import Accepted, accept_greedy
from draftheads.decoding.tree import Tree


def test_from_paths_adds_prefixes_and_orders_parents_first():
    tree = Tree.from_paths([(0, 1), (1,), (0, 0, 0)])
    # nodes: (), (0,), (1,), (0,0), (0,1), (0,0,0)
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 3]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 3]
    assert tree.rank.tolist() == [0, 0, 1, 0, 1, 0]
    assert tree.path_to(5) == [0, 1, 3, 5]


def test_ancestor_mask_and_positions_are_exact():
    tree = Tree.from_paths([(0, 1), (1,), (0, 0, 0)])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(tree.ancestor_mask(), expected)
    assert tree.position_ids(37).tolist() == [37, 38, 38, 39, 39, 40]


def test_chain_and_empty_tree():
    assert Tree.chain(0).parents.tolist() == [-1]
    assert Tree.chain(3).parents.tolist() == [-1, 0, 1, 2]


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-1, 0, 3, 1], []])
def test_invalid_trees_are_refused(parents):
    with pytest.raises(ValueError, match="not a parents-first tree"):
        Tree(
            torch.tensor(parents, dtype=torch.long),
            torch.zeros(len(parents), dtype=torch.long),
            torch.zeros(len(parents), dtype=torch.long),
        )


@pytest.mark.parametrize(
    "tokens, accepted, bonus",
    [
        ([5, 9, 9, 9, 9, 9], [0], 6),  # accept none: bonus is the base's own next token
        ([5, 6, 8, 7, 9, 1], [0, 1, 3, 5], 2),  # accept all along the deepest path
        ([5, 6, 6, 7, 9, 4], [0, 1, 3], 1),  # partial: depth 3 wrong
        ([5, 9, 6, 9, 7, 9], [0, 2], 7),  # the second-ranked sibling is the right one
    ],
)
def test_greedy_acceptance_edges(tokens, accepted, bonus):
    tree = Tree.from_paths([(0, 1), (1,), (0, 0, 0)])
    # Base argmax after each node: root -> 6, (0,) -> 7, (1,) -> 7, (0,0) -> 1, (0,1) -> 0, (0,0,0) -> 2
    target = torch.tensor([6, 7, 7, 1, 0, 2])
    assert accept_greedy(tree, torch.tensor(tokens), target) == Accepted(accepted, bonus)


def tree_forward(model, prefix: torch.Tensor, tree: Tree, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of every tree node from ONE forward over prefix + nodes (ancestor mask, depth positions)."""
    n, t = prefix.shape[1], tree.size
    mask = torch.ones(1, 1, n + t, n + t, dtype=torch.bool).tril()
    mask[..., n:, n:] = tree.ancestor_mask()
    positions = torch.cat([torch.arange(n), tree.position_ids(n)])[None]
    return model(torch.cat([prefix, tokens[None]], dim=1), attention_mask=mask, position_ids=positions).logits[0, n:]


def test_tree_forward_equals_a_plain_forward_along_every_path(tiny_llama):
    """The derived mask and positions make each node see exactly its own path: its logits equal
    those of an ordinary causal forward over prefix + that path."""
    torch.manual_seed(0)
    prefix = torch.randint(0, 128, (1, 7))
    tree = Tree.from_paths([(0, 0, 0), (1,), (1, 0), (0, 1), (2, 1)])
    tokens = torch.randint(0, 128, (tree.size,))
    with torch.no_grad():
        together = tree_forward(tiny_llama, prefix, tree, tokens)
        for node in range(tree.size):
            path = tokens[tree.path_to(node)][None]
            alone = tiny_llama(torch.cat([prefix, path], dim=1)).logits[0, -1]
            torch.testing.assert_close(together[node], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("correct_depths", [0, 1, 2, 3])
def test_one_tree_forward_commits_exactly_the_greedy_tokens(tiny_llama, correct_depths):
    """Verify a whole tree in one forward, accept greedily: the committed tokens equal plain greedy
    decoding, however many drafted tokens were right."""
    torch.manual_seed(correct_depths)
    prefix = torch.randint(0, 128, (1, 9))
    tree = Tree.from_paths([(0, 0, 0), (1,), (1, 0), (0, 1)])
    with torch.no_grad():
        greedy = []
        ids = prefix
        for _ in range(5):
            greedy.append(int(tiny_llama(ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[greedy[-1]]])], dim=1)
        # The root holds the base's next token; the rank-0 chain is right up to `correct_depths`;
        # every other node is wrong.
        chain = {0} | {i for i in range(1, tree.size) if tree.path_to(i)[1] == 1 and tree.rank[i] == 0}
        tokens = torch.tensor([greedy[int(d)] for d in tree.depth])
        for node in range(tree.size):
            if node not in chain or tree.depth[node] > correct_depths:
                tokens[node] = (tokens[node] + 1) % 128
        result = accept_greedy(tree, tokens, tree_forward(tiny_llama, prefix, tree, tokens).argmax(-1))
        accepted, bonus = result.nodes, result.bonus
    committed = [int(tokens[i]) for i in accepted] + [bonus]
    assert len(accepted) == 1 + correct_depths
    assert committed == greedy[: len(committed)]


def test_each_engine_drafts_the_tree_its_rules_state():
    """`--tree ENGINE` decodes with the tree the engine drafts (models/engines.py): SGLang's EAGLE-2
    as the export README launches it, vLLM's chain, SafeAILab's defaults, medusa-llm's cartesian
    default, TensorRT-LLM's saved choices."""
    from draftheads.decoding.tree import TreeSpec, engine_tree

    assert engine_tree("vllm", "eagle", 3) == TreeSpec("static", paths=[[0], [0, 0], [0, 0, 0]])
    assert engine_tree("sglang", "eagle", 3) == TreeSpec("eagle2", budget=7, width=4, depth=3)
    assert engine_tree("reference", "eagle", 1) == TreeSpec("eagle2", budget=59, width=10, depth=8)  # total_token 60, depth 7
    medusa = engine_tree("reference", "medusa", 4)
    assert len(medusa.paths) == 7 + 7 * 6 and [6, 5] in medusa.paths and max(map(len, medusa.paths)) == 2
    assert engine_tree("trtllm", "medusa", 4, [[0], [1], [0, 0]]).paths == [[0], [1], [0, 0]]
    assert engine_tree("trtllm", "medusa", 2).paths == [[0], [0, 0]]
    with pytest.raises(ValueError, match="served .* by reference, trtllm"):
        engine_tree("vllm", "medusa", 3)
    with pytest.raises(ValueError, match="no engine serves hydra"):
        engine_tree("sglang", "hydra", 3)


def test_every_engine_is_a_tree_kind_the_eval_resolves_and_the_engine_refuses_unresolved():
    import typing

    from draftheads.decoding.tree import DRAFTED, TreeSpec
    from draftheads.models.engines import ENGINES

    kinds = typing.get_args(typing.get_type_hints(TreeSpec)["kind"])
    assert set(kinds) == {*DRAFTED, "auto", *ENGINES}
    assert TreeSpec("dynamic").resolved and not TreeSpec("dynamic", lookup="auto").resolved and not TreeSpec("vllm").resolved


def test_an_eagle2_tree_is_predicted_from_the_best_paths_within_its_shape():
    """Paths an EAGLE-2 tree cannot hold (a rank past its width, deeper than its depth) take no
    slot of its budget."""
    from collections import Counter

    from draftheads.decoding.planning.stats import RankStats
    from draftheads.decoding.tree import TreeSpec
    from draftheads.eval.metrics import rank_paths

    stats = RankStats(10, Counter({(0,): 5, (4,): 4, (0, 0): 3, (1,): 3, (0, 0, 0): 2}), [])
    assert rank_paths(TreeSpec("eagle2", budget=3, width=4, depth=2), stats) == [[0], [1], [0, 0]]  # ties: shorter first
    assert rank_paths(TreeSpec("eagle2", budget=3, width=8, depth=0), stats) == [[0], [4], [1]]
