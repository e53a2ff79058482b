"""Replaying a decode's steps on calibration answers, to predict τ with autocorrelation and with
the lookup branch.

Expected τ from position frequencies (`RankStats.expected_tau`) weighs every answer position
alike. A decode does not: a step that accepts a tokens skips the next a positions, so where easy
positions cluster (a list, a quoted phrase) it visits fewer of them than their share, and τ is the
positions' harmonic mean of 1 + accepted rather than their arithmetic mean. A lookup branch makes
this decisive: in a copied run of R tokens every position copies correctly, but the decode steps
through it once. So answers the heads were calibrated on are kept position by position
(`AnswerWalk`), and a decode of a tree is replayed on them step by step: each step accepts the
longer of the heads' correct path (the true rank path's longest prefix in the tree) and the lookup
copy's correct prefix (the two are one path each from the root, so the union's longest correct path
is the longer one), then the bonus token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from draftheads.decoding.lookup import lookup_continuation

LOOKUP_CAP = 32
"""Most correctly copied tokens recorded per position (lookup branches up to this length are predicted)."""
WALKS_KEPT = 256
"""Most held-out answers training keeps as walks: the auto tree replays every candidate on all of them
at start-up (and the prediction's spread many times more), so the time grows with them, and a large
held-out set would make calibration.json large."""


@dataclass
class AnswerWalk:
    """One calibration answer, position by position from its first drafting position (the root is
    the answer's first token, depth 1 drafts its second)."""

    turn: int
    """0 for a first answer, 1 for the answer to a second user turn, ..."""
    ranks: list[list[int]]
    """[position][depth]: rank of the true token under that depth's head (max rank: not in the top, or past the recorded tokens)."""
    copies: list[int]
    """[position]: how many leading tokens of the lookup copy equal the answer's next ones (at most LOOKUP_CAP)."""
    length: int
    """Tokens of the answer a decode emits (to EOS or its limit); the positions past it hold the base
    model's continuation, which the last step of a decode verifies but does not emit."""
    proposed: list[int] | None = None
    """[position]: how many tokens the lookup proposes there, right or wrong (at most LOOKUP_CAP): what
    the branch adds to the verified tree. None when the calibration holds no
    proposals: branches are then predicted, not costed."""

    def to_json(self) -> dict:
        data = {"turn": self.turn, "length": self.length, "ranks": self.ranks, "copies": self.copies}
        return data if self.proposed is None else {**data, "proposed": self.proposed}

    @classmethod
    def from_json(cls, data: dict) -> "AnswerWalk":
        proposed = list(map(int, data["proposed"])) if "proposed" in data else None
        walk = cls(
            int(data["turn"]), [list(map(int, row)) for row in data["ranks"]], list(map(int, data["copies"])), int(data["length"]), proposed
        )
        if not len(walk.copies) == len(walk.ranks) >= walk.length or (proposed is not None and len(proposed) != len(walk.copies)):
            raise ValueError(
                f"a walk of length {walk.length} has {len(walk.ranks)} rank rows, "
                f"{len(walk.copies)} copies and {len(proposed or [])} proposals"
            )
        return walk


class Steps(NamedTuple):
    """A replayed decode, step by step."""

    accepted: list[int]
    """Tokens emitted at each step less one (the engine's `GenerationResult.accepted`): τ is 1 + their mean."""
    copied: list[int]
    """Tokens the lookup branch proposed at each step (0 without a branch, or where the walks did not
    record proposals): the verified tree grows by at most this many nodes."""


def lookup_copies(ids: list[int], start: int, ngram: int) -> tuple[list[int], list[int]]:
    """For every drafting position of the answer `ids[start:]` (root at `start`, `start + 1`, ...,
    tokens past the answer's end included): how many tokens the lookup branch copies correctly
    (`lookup_continuation` over the context up to the root), and how many it proposes, at most
    LOOKUP_CAP each."""
    correct, proposed = [], []
    for root in range(start, len(ids)):
        copy = lookup_continuation(ids[: root + 1], LOOKUP_CAP, ngram)
        truth = ids[root + 1 : root + 1 + len(copy)]
        matched = 0
        while matched < len(truth) and copy[matched] == truth[matched]:
            matched += 1
        correct.append(matched)
        proposed.append(len(copy))
    return correct, proposed


def answer_walk(ids: list[int], start: int, length: int, turn: int, ranks: list[list[int]], ngram: int) -> AnswerWalk:
    """The walk of the answer `ids[start:start + length]` whose drafting positions hold the heads'
    `ranks` (one row per token from `start` on; tokens past the answer are the base model's
    continuation, which a decode's last step verifies but does not emit), with the copies of a
    lookup branch matching up to `ngram` tokens of the context before each position."""
    correct, proposed = lookup_copies(ids, start, ngram)
    return AnswerWalk(turn, ranks, correct, length, proposed)


def kept_walks(walks: list[AnswerWalk], most: int = WALKS_KEPT) -> list[AnswerWalk]:
    """At most `most` of `walks`, spread evenly over them in an order that does not depend on the
    order they came in (how many processes gathered them)."""
    ordered = sorted(walks, key=lambda w: (w.turn, w.length, w.copies, w.ranks))
    if len(ordered) <= most:
        return ordered
    return [ordered[i * len(ordered) // most] for i in range(most)]


def replay(walks: list[AnswerWalk], paths: set[tuple[int, ...]], lookup: int, turns: int, new_tokens: int) -> Steps:
    """The steps of decoding the first `new_tokens` tokens of every recorded answer of turns below
    `turns` greedily, with the tree of rank `paths` (prefix-closed) and a lookup branch of up to
    `lookup` tokens (0: none)."""
    accepted, copied = [], []
    for walk in walks:
        if walk.turn >= turns:
            continue
        end = min(new_tokens, walk.length)
        done = 1  # the prefill commits the answer's first token
        while done < end:
            row = walk.ranks[done - 1]
            heads = 0
            while heads < len(row) and tuple(row[: heads + 1]) in paths:
                heads += 1
            # as the engine counts: a step emits its accepted drafts and the bonus, up to the answer's end
            accepted.append(min(max(heads, min(walk.copies[done - 1], lookup)), end - done - 1))
            copied.append(min(walk.proposed[done - 1], lookup) if walk.proposed is not None else 0)
            done += accepted[-1] + 1
    return Steps(accepted, copied)
