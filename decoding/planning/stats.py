"""What the heads are worth before decoding: their joint rank statistics on the base model's own
continuations (a heads folder's calibration.json), from which expected τ is read.

Ranks are measured teacher-forced on sequences the base model generated itself (greedy), which
is exactly what greedy verification accepts: at position t, depth k's candidate of rank r is
accepted when the true token t+1+k is the head's r-th most likely token and every shallower depth
on its path was accepted too. A static tree node with rank path (r1..rd) is therefore accepted at a
position with probability P(rank_1 = r1, ..., rank_d = rd), counted jointly (no independence
assumption), and the expected τ of a tree is 1 + the sum of its nodes' probabilities.

Acceptance depends on where in a conversation a position lies: the first tokens of an answer are
harder to draft than later ones. So
the statistics are also kept per cell of (turn, answer-offset bucket), and a decode of T turns x N
new tokens is predicted from the cells it drafts in (`RankStats.within`), not from every position.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from draftheads.decoding.tree import LOOKUP_NGRAM, Tree
from draftheads.models.heads_folder import CALIBRATION_NAME
from draftheads.decoding.planning.walks import LOOKUP_CAP, AnswerWalk, Steps, answer_walk, replay
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.base import DraftHeads
from draftheads.utils.errors import ModelLoadError


OFFSET_BUCKET = 32
"""Answer offsets are counted in buckets of this many tokens (cells of `RankStats.cells`)."""

LAST_TURN = 2
"""Turns are counted 0, 1 and 2 = third or later (cells of `RankStats.cells`)."""


class Answer(NamedTuple):
    """One generated answer to measure the heads on."""

    ids: list[int]
    """The prompt, the answer, then any tokens past its end."""
    start: int
    """Index of the answer's first token."""
    turn: int = 0
    """0 for a first answer, 1 for the answer to a second user turn, ..."""
    past: int = 0
    """Trailing tokens that continue past the answer's end (EOS or the limit): never emitted, but a
    decode's last step verifies them (`AnswerWalk`); no statistic counts a position drafting them."""


@dataclass
class RankStats:
    """Joint rank-path frequencies of the heads over calibration positions."""

    positions: int
    path_counts: Counter
    """(r1, ..., rd) -> positions where depths 1..d had exactly these ranks (ranks < max_rank)."""
    depth_topk: list[list[float]]
    """[depth][k]: fraction of positions where the true token is in the head's top k+1."""
    cells: dict[tuple[int, int], "RankStats"] | None = None
    """The same statistics per (turn, answer offset // OFFSET_BUCKET), when positions were located."""
    walks: list[AnswerWalk] | None = None
    """Each calibration answer position by position (`decoding/planning/walks.py`), when answers were kept."""
    lookup_ngram: int | None = None
    """The lookup n-gram the walks' copies were counted with."""

    def probability(self, path: tuple[int, ...]) -> float:
        """Fraction of positions where the path's nodes are all accepted."""
        return self.path_counts.get(tuple(path), 0) / max(self.positions, 1)

    def expected_tau(self, tree: Tree) -> float:
        """1 + the expected accepted drafts of `tree` under greedy verification."""
        ranks = tree.rank.tolist()
        return 1 + sum(self.probability(tuple(ranks[n] for n in tree.path_to(i)[1:])) for i in range(1, tree.size))

    def expected_acceptance_by_depth(self, tree: Tree) -> list[float]:
        """Per depth d: probability that some node of depth d is accepted."""
        depth = tree.depth.tolist()
        ranks = tree.rank.tolist()
        out = [0.0] * max(depth, default=0)
        for i in range(1, tree.size):
            out[depth[i] - 1] += self.probability(tuple(ranks[n] for n in tree.path_to(i)[1:]))
        return out

    def best_paths(
        self, count: int, width: int | None = None, max_rank: int | None = None, max_depth: int | None = None
    ) -> list[list[int]]:
        """The `count` most probable rank paths, at most `width` of them per depth, of ranks below
        `max_rank` and at most `max_depth` long; prefix-closed (a prefix is at least as likely, ties
        put shorter paths first, and a path whose prefix was left out is left out too)."""
        fits = [
            (p, c)
            for p, c in self.path_counts.items()
            if (max_rank is None or max(p) < max_rank) and (max_depth is None or len(p) <= max_depth)
        ]
        ordered = sorted(fits, key=lambda kv: (-kv[1], len(kv[0]), kv[0]))
        chosen: set[tuple[int, ...]] = set()
        per_depth: Counter = Counter()
        out = []
        for path, _ in ordered:
            if len(out) == count:
                break
            if (width is not None and per_depth[len(path)] >= width) or (len(path) > 1 and path[:-1] not in chosen):
                continue
            chosen.add(path)
            per_depth[len(path)] += 1
            out.append(list(path))
        return out

    def within(self, turns: int, new_tokens: int) -> "RankStats | None":
        """The statistics of the cells a decode of `turns` turns x `new_tokens` new tokens per turn
        drafts in: turns below `turns` (the last cell stands for every later turn) and offset buckets
        starting below `new_tokens` (so N is rounded up to whole buckets). Cells keep the held-out
        data's own mix of turns. None when no cell fits (or none were recorded)."""
        chosen = [c for (turn, bucket), c in (self.cells or {}).items() if turn < turns and bucket * OFFSET_BUCKET < new_tokens]
        positions = sum(c.positions for c in chosen)
        if not positions:
            return None
        counts: Counter = sum((c.path_counts for c in chosen), Counter())
        topk = [
            [sum(c.depth_topk[d][k] * c.positions for c in chosen) / positions for k in range(len(row))]
            for d, row in enumerate(self.depth_topk)
        ]
        walks = [w for w in self.walks if w.turn < turns] if self.walks is not None else None
        return RankStats(positions, counts, topk, walks=walks, lookup_ngram=self.lookup_ngram)

    def replayed(
        self, paths: list[list[int]], turns: int, new_tokens: int, lookup: int = 0, lookup_ngram: int = LOOKUP_NGRAM
    ) -> list[int] | None:
        """Drafted tokens accepted per step when a greedy decode of the tree of rank `paths`, with a
        lookup branch of `lookup` tokens, is replayed on the kept answers (`walks.replay`); None
        without walks, or with a branch the walks cannot replay (another n-gram than the copies were
        counted with, or longer than the LOOKUP_CAP tokens they count)."""
        steps = self.replay_steps(paths, turns, new_tokens, lookup, lookup_ngram)
        return steps.accepted if steps is not None else None

    def replay_steps(
        self, paths: list[list[int]], turns: int, new_tokens: int, lookup: int = 0, lookup_ngram: int = LOOKUP_NGRAM
    ) -> Steps | None:
        """`replayed`, with the tokens the branch proposed at each step too."""
        if not self.walks or (lookup and (lookup_ngram != self.lookup_ngram or lookup > LOOKUP_CAP)):
            return None
        return replay(self.walks, {tuple(p) for p in paths}, lookup, turns, new_tokens)

    def costs_branches(self) -> bool:
        """Whether the walks recorded what the lookup proposed at each position (so a branch's
        verification cost can be replayed, not only its acceptance)."""
        return bool(self.walks) and all(w.proposed is not None for w in self.walks)

    @classmethod
    def located(cls, ranks: torch.Tensor, turns: torch.Tensor, offsets: torch.Tensor, max_rank: int = 10) -> "RankStats":
        """`from_ranks` over all positions, with cells by turn [positions] and answer offset [positions]."""
        stats = cls.from_ranks(ranks, max_rank)
        cells = torch.stack([turns.clamp(0, LAST_TURN), offsets.clamp(min=0) // OFFSET_BUCKET], 1)
        stats.cells = {}
        for cell in cells.unique(dim=0).tolist():
            rows = (cells == torch.tensor(cell)).all(1)
            stats.cells[tuple(cell)] = cls.from_ranks(ranks[rows], max_rank)
        return stats

    @classmethod
    def from_ranks(cls, ranks: torch.Tensor, max_rank: int = 10) -> "RankStats":
        """Statistics of ranks [positions, depths] of the true tokens (>= max_rank: not in the top)."""
        counts: Counter = Counter()
        for row in ranks.tolist():
            path: tuple[int, ...] = ()
            for r in row:
                if r >= max_rank:
                    break
                path += (r,)
                counts[path] += 1
        positions = ranks.shape[0]
        topk = (ranks[:, :, None] <= torch.arange(max_rank)).sum(0).float() / max(positions, 1)
        return cls(positions, counts, topk.tolist())

    def to_json(self) -> dict:
        """JSON-ready (paths as lists)."""
        out = {
            "positions": self.positions,
            "depth_topk": self.depth_topk,
            "path_counts": [[list(p), c] for p, c in sorted(self.path_counts.items())],
        }
        if self.cells is not None:
            out["offset_bucket"], out["last_turn"] = OFFSET_BUCKET, LAST_TURN
            out["cells"] = [{"turn": turn, "bucket": bucket, **cell.to_json()} for (turn, bucket), cell in sorted(self.cells.items())]
        if self.walks is not None:
            out["lookup_ngram"], out["walks"] = self.lookup_ngram, [w.to_json() for w in self.walks]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "RankStats":
        """Inverse of `to_json` (a file without cells gives none)."""
        stats = cls(int(data["positions"]), Counter({tuple(p): int(c) for p, c in data["path_counts"]}), data["depth_topk"])
        # Cells counted with another OFFSET_BUCKET or LAST_TURN are left out, not misread.
        if "cells" in data and (data.get("offset_bucket"), data.get("last_turn")) == (OFFSET_BUCKET, LAST_TURN):
            stats.cells = {(int(c["turn"]), int(c["bucket"])): cls.from_json(c) for c in data["cells"]}
        if "walks" in data:
            stats.walks, stats.lookup_ngram = [AnswerWalk.from_json(w) for w in data["walks"]], data.get("lookup_ngram")
        return stats


def calibration_json(stats: RankStats, source: str) -> str:
    """The text of a heads folder's calibration file."""
    return json.dumps({"source": source, **stats.to_json()}) + "\n"


def read_calibration(
    folder, turns: int | None = None, new_tokens: int | None = None, name: str = CALIBRATION_NAME
) -> tuple[RankStats, str] | None:
    """The rank statistics saved in a heads folder (file `name`) and where they were measured, if
    any; with `turns` and `new_tokens`, those of the positions such a decode makes (`RankStats.within`)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        stats = RankStats.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a calibration file ({exc})") from None
    source = data.get("source", "unknown data")
    if not (turns and new_tokens):
        return stats, f"{source} ({stats.positions} positions, {path})"
    shaped = stats.within(turns, new_tokens)
    if shaped is None:
        why = (
            "no position lies in them" if stats.cells else "the file records no positions' turns and offsets: rerun `draftheads calibrate`"
        )
        return (
            stats,
            f"{source}, all positions, not only those a decode of {turns} turn(s) x {new_tokens} new tokens makes "
            f"({why}; {stats.positions} positions, {path})",
        )
    return (
        shaped,
        f"{source}, the positions a decode of {turns} turn(s) x {new_tokens} new tokens makes ({shaped.positions} positions, {path})",
    )


@torch.inference_mode()
def rank_stats(
    draft: DraftModel, sequences: list[Answer | tuple], max_rank: int = 10, keep_walks: bool = False, lookup_ngram: int = LOOKUP_NGRAM
) -> RankStats:
    """Ranks of the true tokens under every head, at every drafting position of the answers, with
    cells by turn and answer offset (`RankStats.located`, located as training's held-out rows are);
    with `keep_walks`, each answer as an `AnswerWalk` too (copies of a lookup branch of `lookup_ngram`).

    `sequences` are `Answer`s, or (ids, start, turn) tuples. The statistics count positions whose
    targets at every depth lie in the answer (its last K tokens are drafted from no counted
    position); the walks keep every position, with max_rank for targets past the last token.
    """
    backbone, heads = draft.backbone, draft.heads
    depths = heads.config.num_heads
    device = backbone.lm_head.weight.device
    parts, turns, offsets = (
        [torch.zeros(0, depths, dtype=torch.long)],
        [torch.zeros(0, dtype=torch.long)],
        [torch.zeros(0, dtype=torch.long)],
    )
    walks = []
    for ids, start, turn, past in (Answer(*s) for s in sequences):
        end = len(ids) - past  # the answer's end
        if start < 1 or end - start < 2:  # the first token has nothing to be drafted from; one token, nothing to draft
            continue
        ids_t = torch.tensor(ids, device=device)[None]
        out = backbone.features(ids_t, layers=heads.config.feature_layers())
        states = heads(out.features, ids_t, depths=depths).states
        first = start - 1  # position t predicts t+1+k at depth k; the root is t+1
        ranks = torch.full((len(ids) - 1 - first, depths), max_rank, dtype=torch.long)
        for k in range(1, depths + 1):
            index = torch.arange(first, len(ids) - 1 - k, device=device)
            ranks[: len(index), k - 1] = true_ranks(heads, k, states[k - 1][0, index], ids_t[0, index + 1 + k], backbone.lm_head, max_rank)
        if keep_walks:
            walks.append(answer_walk(ids, start, end - start, turn, ranks.tolist(), lookup_ngram))
        full = max(end - 1 - depths - first, 0)  # positions with a target at every depth within the answer
        parts.append(ranks[:full])
        # Located by the first drafted token (t + 2), as training locates its held-out positions.
        offsets.append(torch.arange(full) + 1)
        turns.append(torch.full((full,), turn))
    stats = RankStats.located(torch.cat(parts), torch.cat(turns), torch.cat(offsets), max_rank)
    if keep_walks:
        stats.walks, stats.lookup_ngram = walks, lookup_ngram
    return stats


def true_ranks(heads: DraftHeads, depth: int, states: torch.Tensor, tokens: torch.Tensor, lm_head, max_rank: int) -> torch.Tensor:
    """[P] rank of each true token under depth `depth`'s logits at `states` [P, H] (max_rank for a
    token outside the draft vocabulary: it is never drafted)."""
    logits = heads.project(depth, states, lm_head).float()
    true = heads.token_index(tokens)
    rank = (logits > logits.gather(1, true.clamp(min=0)[:, None])).sum(1)
    return rank.masked_fill(true < 0, max_rank).clamp(max=max_rank).cpu()
