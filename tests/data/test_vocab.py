"""Choosing the draft vocabulary from the training data's trained-on targets."""

from __future__ import annotations

import pytest
import torch

from draftheads.data.dataset import ChatDataset, Row
from draftheads.data.vocab import choose_draft_vocabulary, count_targets
from draftheads.utils.errors import ConfigError


def test_only_trained_on_tokens_count_and_ties_go_to_the_lower_id():
    rows = [Row([5, 7, 7, 9, 9, 2], [0, 1, 1, 1, 1, 0]), Row([3, 3, 3, 9], [0, 0, 0, 1])]
    counts = count_targets(ChatDataset(rows), 12)
    assert counts.tolist() == [0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0]  # 3 and 5 are prompt tokens
    vocab = choose_draft_vocabulary(counts, 3)
    # 9 (3 times), 7 (twice), then the unseen 0 fills up (lowest id); sorted ascending
    assert vocab.tokens.tolist() == [0, 7, 9] and vocab.coverage == 1.0 and vocab.targets == 5 and vocab.distinct == 2
    assert choose_draft_vocabulary(counts, 1).tokens.tolist() == [9] and choose_draft_vocabulary(counts, 1).coverage == pytest.approx(0.6)
    assert "1 tokens cover 60.00% of 5 trained-on target tokens" in choose_draft_vocabulary(counts, 1).summary()


def test_bad_sizes_and_ids_are_refused():
    counts = torch.ones(10, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"draft_vocab_size 11 must be between 1 and the base vocabulary size \(10\)"):
        choose_draft_vocabulary(counts, 11)
    with pytest.raises(ConfigError, match="token id 12, beyond the base vocabulary"):
        count_targets(ChatDataset([Row([12], [1])]), 10)
