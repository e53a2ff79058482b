"""The draft vocabulary: the tokens a reduced-vocabulary head projects onto, chosen from the
training data as EAGLE-3 chooses them (the most frequent trained-on target tokens).

Counted in one pass over the token ids and loss masks of the training rows (a hidden-state cache
is read without its features); ties go to the lower token id, and the chosen ids are returned
sorted, so the same data always gives the same map. Coverage is the share of trained-on target
tokens the vocabulary holds: the rest can never be drafted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftheads.utils.errors import ConfigError


@dataclass
class DraftVocabulary:
    """A chosen draft vocabulary and what it covers of the data it was chosen on."""

    tokens: torch.Tensor
    """[N] long, ascending token ids."""
    coverage: float
    """Share of the trained-on target tokens that are in `tokens`."""
    targets: int
    """Trained-on target tokens counted."""
    distinct: int
    """Distinct target tokens seen."""

    def summary(self) -> str:
        """One line for training logs."""
        return (
            f"draft vocabulary: {self.tokens.numel()} tokens cover {self.coverage:.2%} of {self.targets} trained-on target "
            f"tokens ({self.distinct} distinct seen)"
        )


def count_targets(dataset, vocab_size: int) -> torch.Tensor:
    """[vocab_size] counts of the trained-on tokens (loss mask 1) of every row of `dataset`."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids, mask in dataset.token_rows():
        ids, mask = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask).bool()
        trained = ids[mask]
        if trained.numel() and int(trained.max()) >= vocab_size:
            raise ConfigError(f"the training data holds token id {int(trained.max())}, beyond the base vocabulary ({vocab_size})")
        counts += torch.bincount(trained, minlength=vocab_size)
    return counts


def choose_draft_vocabulary(counts: torch.Tensor, size: int) -> DraftVocabulary:
    """The `size` most frequent tokens of `counts` (lower ids first on ties; unseen tokens fill up
    by id when the data holds fewer distinct targets than `size`)."""
    vocab_size = counts.numel()
    if not 0 < size <= vocab_size:
        raise ConfigError(f"heads.draft_vocab_size {size} must be between 1 and the base vocabulary size ({vocab_size})")
    # stable sort on -count keeps ascending ids among equal counts
    order = torch.sort(-counts, stable=True).indices
    tokens = torch.sort(order[:size]).values
    total = int(counts.sum())
    return DraftVocabulary(tokens, int(counts[tokens].sum()) / max(total, 1), total, int((counts > 0).sum()))
