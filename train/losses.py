"""Per-depth head losses: hard labels, soft labels (self-distillation), and held-out accuracy.

Depth k (1-based) at position t predicts token t+1+k. It is trained there when token t+1+k is
assistant text (loss mask) and belongs to the same document as t (packed rows: position ids run on
without restarting in between). Soft labels are the backbone's own distribution for that same
token, read at position t+k of the same forward: self-distillation at no extra forward (or, from
the hidden-state cache, the backbone's top-k log-probabilities stored for position t+k).

With a reduced draft vocabulary the heads' logits cover only its tokens: targets outside it cannot
be drafted and are left out of the loss (their share is the vocabulary's coverage, reported by the
held-out metrics), and soft labels are the teacher's distribution renormalised over it.

Vocabulary logits are formed only at trained positions, `chunk_size` at a time, under activation
checkpointing: memory holds one chunk of [chunk, vocab] logits instead of K x batch x seq x vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from draftheads.decoding.planning.stats import true_ranks
from draftheads.decoding.planning.walks import AnswerWalk, answer_walk
from draftheads.models.heads.base import DraftHeads, HeadOutput


@dataclass
class Targets:
    """Where depth k is trained: batch rows, source positions t, and target tokens t+1+k."""

    rows: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor

    def __len__(self) -> int:
        return self.rows.numel()


def depth_targets(batch: dict[str, torch.Tensor], depth: int) -> Targets:
    """Trained positions of depth `depth` (1-based; 0 is the backbone's own next token) in a collated batch."""
    ids, mask = batch["input_ids"], batch["loss_mask"]
    offset = depth + 1
    if offset >= ids.shape[1]:
        empty = ids.new_zeros(0)
        return Targets(empty, empty, empty)
    valid = mask[:, offset:].bool()
    positions = batch.get("position_ids")
    if positions is not None:
        valid &= positions[:, offset:] == positions[:, :-offset] + offset
    rows, cols = valid.nonzero(as_tuple=True)
    return Targets(rows, cols, ids[rows, cols + offset])


def target_counts(batch: dict[str, torch.Tensor], depths: int, with_next_token: bool = False) -> torch.Tensor:
    """Trained positions per depth, [depths] (float, for all-reduce); with `with_next_token`,
    [1 + depths] starting with the backbone's own next-token positions (depth 0)."""
    first = 0 if with_next_token else 1
    return torch.tensor([len(depth_targets(batch, k)) for k in range(first, depths + 1)], dtype=torch.float32)


def _chunk_loss(
    states, tokens, teacher_states, project: Callable, teacher_project: Callable, soft_weight: float,
    top_ids=None, top_logprobs=None,
):
    """Summed loss of one chunk; `tokens` are indices into `project`'s vocabulary (-100: not in it),
    cached `top_ids` too (-100 for teacher tokens outside it)."""
    log_probs = F.log_softmax(project(states).float(), dim=-1)
    loss = log_probs.new_zeros(())
    if soft_weight < 1.0:
        loss = loss + (1.0 - soft_weight) * F.nll_loss(log_probs, tokens, reduction="sum", ignore_index=-100)
    if soft_weight > 0.0 and top_ids is not None:
        # Cached teacher top-k: KL from the teacher renormalised on its k tokens that the vocabulary
        # holds (no lm_head pass); a row with none of them adds nothing.
        inside = top_ids >= 0
        masked = top_logprobs.float().masked_fill(~inside, float("-inf"))
        norm = torch.logsumexp(masked, dim=-1, keepdim=True)
        teacher = torch.where(inside, masked - norm, torch.zeros_like(masked))
        student = log_probs.gather(-1, top_ids.clamp(min=0))
        loss = loss + soft_weight * torch.where(inside, teacher.exp() * (teacher - student), torch.zeros_like(student)).sum()
    elif soft_weight > 0.0:
        with torch.no_grad():
            teacher = F.log_softmax(teacher_project(teacher_states).float(), dim=-1)
        loss = loss + soft_weight * F.kl_div(log_probs, teacher, log_target=True, reduction="sum")
    return loss


def _targets_loss_sum(
    targets: Targets, states, project: Callable, teacher_hidden, teacher_project: Callable, shift: int,
    soft_weight: float, chunk_size: int, batch: dict, to_index: Callable = lambda tokens: tokens,
) -> torch.Tensor:
    """Summed loss of `project(states)` at `targets`; the teacher's distribution for token t+1+shift
    is read at position t+shift (from `teacher_hidden`, or the cache's top-k when the batch has them).
    `to_index` maps token ids to indices of `project`'s vocabulary."""
    total = states.new_zeros((), dtype=torch.float32)
    # Recomputing logits in backward costs one more projection; it only pays when several
    # chunks' logits would otherwise be alive at once.
    several = len(targets) > chunk_size
    cached = soft_weight > 0 and "teacher_ids" in batch
    for start in range(0, len(targets), chunk_size):
        rows = targets.rows[start : start + chunk_size]
        cols = targets.positions[start : start + chunk_size]
        teacher_states = None if cached or teacher_hidden is None else teacher_hidden[rows, cols + shift]
        tokens = to_index(targets.tokens[start : start + chunk_size])
        args = (states[rows, cols], tokens, teacher_states, project, teacher_project, soft_weight)
        if cached:
            args += (to_index(batch["teacher_ids"][rows, cols + shift].long()), batch["teacher_logprobs"][rows, cols + shift])
        total = total + (checkpoint(_chunk_loss, *args, use_reentrant=False) if several else _chunk_loss(*args))
    return total


def depth_loss_sums(
    heads: DraftHeads,
    output: HeadOutput,
    batch: dict[str, torch.Tensor],
    base_hidden: torch.Tensor,
    lm_head: nn.Module,
    soft_weight: float,
    chunk_size: int,
    feature_weight: float = 0.0,
) -> list[torch.Tensor]:
    """Summed (not averaged) loss per depth; the caller divides by the global target counts."""
    sums = []
    for depth, states in enumerate(output.states, start=1):
        targets = depth_targets(batch, depth)
        total = states.new_zeros((), dtype=torch.float32)
        if feature_weight > 0 and output.predicted_features is not None:
            # The feature that predicts token t+1+k is the backbone's hidden state at t+k.
            predicted = output.predicted_features[depth - 1][targets.rows, targets.positions].float()
            # detached: in joint training the backbone must not be pulled towards the heads' guesses
            target = base_hidden[targets.rows, targets.positions + depth].detach().float()
            total = total + feature_weight * F.smooth_l1_loss(predicted, target, reduction="none").mean(-1).sum()

        def project(chunk, depth=depth):
            return heads.project(depth, chunk, lm_head)

        def teacher(chunk):  # the backbone's distribution over the draft vocabulary
            return heads.shared_projection(chunk, lm_head)

        # Soft labels: the backbone's own prediction at t+k for the same token t+1+k.
        total = total + _targets_loss_sum(
            targets, states, project, base_hidden, teacher, depth, soft_weight, chunk_size, batch, heads.token_index
        )
        sums.append(total)
    return sums


def backbone_loss_sum(
    hidden: torch.Tensor,
    batch: dict[str, torch.Tensor],
    lm_head: nn.Module,
    objective: str,
    teacher_hidden: torch.Tensor | None,
    teacher_head: nn.Module,
    chunk_size: int,
) -> torch.Tensor:
    """Summed L_backbone of joint training over the batch's next-token positions (those depth 0
    trains): `lm` is cross-entropy on the data's tokens; `kl` is KL(original || trained), the
    original's distribution taken from `teacher_head(teacher_hidden)` or, when `teacher_hidden` is
    None, from the cache's teacher top-k in the batch."""
    if objective == "kl" and teacher_hidden is None and "teacher_ids" not in batch:
        raise ValueError("objective kl needs the original model's hidden states or cached teacher top-k")
    targets = depth_targets(batch, 0)
    soft = 1.0 if objective == "kl" else 0.0
    if teacher_hidden is not None:
        batch = {k: v for k, v in batch.items() if k not in ("teacher_ids", "teacher_logprobs")}
    return _targets_loss_sum(targets, hidden, lm_head, teacher_hidden, teacher_head, 0, soft, chunk_size, batch)


@torch.no_grad()
def depth_accuracy_counts(
    heads: DraftHeads, output: HeadOutput, batch: dict[str, torch.Tensor], lm_head: nn.Module, chunk_size: int
) -> torch.Tensor:
    """[depths, 5]: targets, top-1 hits, top-5 hits, summed cross-entropy over the targets the
    draft vocabulary holds, and how many it holds (held-out metrics; a target outside the draft
    vocabulary counts as a miss)."""
    rows_out = []
    for depth, states in enumerate(output.states, start=1):
        targets = depth_targets(batch, depth)
        counts = torch.zeros(5, dtype=torch.float64)
        for start in range(0, len(targets), chunk_size):
            part = slice(start, start + chunk_size)
            logits = heads.project(depth, states[targets.rows[part], targets.positions[part]], lm_head).float()
            tokens = heads.token_index(targets.tokens[part])
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            inside = tokens >= 0
            counts[0] += tokens.numel()
            counts[1] += (top5[:, 0] == tokens).sum().item()
            counts[2] += (top5 == tokens[:, None]).any(-1).sum().item()
            counts[3] += F.cross_entropy(logits[inside], tokens[inside], reduction="sum").item()
            counts[4] += inside.sum().item()
        rows_out.append(counts)
    return torch.stack(rows_out)


def depth_weights(depths: int, decay: float) -> list[float]:
    """λ_k = decay^(k-1) for k = 1..depths."""
    return [decay ** (k - 1) for k in range(1, depths + 1)]


def joint_positions(batch: dict[str, torch.Tensor], depths: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the positions every depth 1..`depths` trains on."""
    targets = [depth_targets(batch, depth) for depth in range(1, depths + 1)]
    length = batch["input_ids"].shape[1]
    common = targets[0].rows * length + targets[0].positions
    for t in targets[1:]:
        common = common[torch.isin(common, t.rows * length + t.positions)]
    return common // length, common % length


def decode_positions(batch: dict[str, torch.Tensor], depths: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, turn, offset) of the positions a decode drafts from, among those every depth
    1..`depths` trains on (`joint_positions`), located by their first drafted token (t + 2): its
    turn, and its offset in its answer. A decode drafts answer tokens from the second on (the
    prefill emits the first), so positions drafting an answer's first token are left out."""
    rows, cols = joint_positions(batch, depths)
    turn, offset = answer_coordinates(batch)
    turn, offset = turn[rows, cols + 2], offset[rows, cols + 2]
    later = offset > 0
    return rows[later], cols[later], turn[later], offset[later]


@torch.no_grad()
def joint_ranks(
    heads: DraftHeads,
    states: list[torch.Tensor],
    batch: dict[str, torch.Tensor],
    lm_head: nn.Module,
    rows: torch.Tensor,
    cols: torch.Tensor,
    max_rank: int = 10,
) -> torch.Tensor:
    """[positions, depths] ranks of the true tokens at (rows, cols), the positions every depth
    trains on (`joint_positions`: the joint rank paths `RankStats` calibrates trees with); max_rank
    where a token is not in the top."""
    ids = batch["input_ids"]
    columns = [
        true_ranks(heads, k, states[k - 1][rows, cols], ids[rows, cols + 1 + k], lm_head, max_rank) for k in range(1, len(states) + 1)
    ]
    return torch.stack(columns, 1) if columns else torch.zeros(0, 0, dtype=torch.long)


@torch.no_grad()
def answer_walks(
    heads: DraftHeads, states: list[torch.Tensor], batch: dict[str, torch.Tensor], lm_head: nn.Module, ngram: int, max_rank: int = 10
) -> list[AnswerWalk]:
    """Every answer of the batch (a run of loss-mask tokens within one conversation) position by
    position, as calibration keeps the base model's answers (`AnswerWalk`): the ranks of its tokens
    under every drafted depth, and what a lookup branch matching up to `ngram` tokens copies from
    the answer's own conversation. Nothing follows an answer here (no continuation): a depth whose
    target lies past the answer's end counts as a miss, which a decode never reaches (its last step
    stops there). One projection per depth for the whole batch, as `joint_ranks` makes: every
    process makes the same calls whatever its answers (a sharded projection gathers on each)."""
    ids = batch["input_ids"]
    spans = answer_spans(batch)
    ranks = [torch.full((end - start, len(states)), max_rank, dtype=torch.long) for _, _, start, end in spans]
    for k in range(1, len(states) + 1):
        # depth k drafts token t + 1 + k from position t: positions start - 1 .. end - 2 - k keep it inside the answer
        cols = [torch.arange(start - 1, end - 1 - k) for _, _, start, end in spans]
        rows = [torch.full_like(c, row) for c, (row, _, _, _) in zip(cols, spans)]
        rows_t, cols_t = (torch.cat(x).to(ids.device) if x else torch.zeros(0, dtype=torch.long, device=ids.device) for x in (rows, cols))
        found = true_ranks(heads, k, states[k - 1][rows_t, cols_t], ids[rows_t, cols_t + 1 + k], lm_head, max_rank)
        for answer, part in zip(ranks, found.split([len(c) for c in cols])):
            answer[: len(part), k - 1] = part
    turn, _ = answer_coordinates(batch)
    walks = []
    for (row, document, start, end), answer in zip(spans, ranks):
        context = ids[row, document:end].tolist()
        walks.append(answer_walk(context, start - document, end - start, int(turn[row, start]), answer.tolist(), ngram))
    return walks


def answer_spans(batch: dict[str, torch.Tensor]) -> list[tuple[int, int, int, int]]:
    """(row, document start, answer start, answer end) of every answer a decode drafts in (the
    answers of `answer_coordinates`), with a token of their conversation before them (the root is
    drafted from it) and at least two tokens."""
    mask = batch["loss_mask"].bool()
    firsts = _conversation_firsts(batch, mask)
    starts = _answer_starts(mask, firsts)
    last = mask & torch.nn.functional.pad(starts[:, 1:] | ~mask[:, 1:], (0, 1), value=True)  # the next token begins another or none
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    document = torch.where(firsts, index, 0).cummax(1).values
    spans = []
    for row in range(mask.shape[0]):
        for begin, end in zip(starts[row].nonzero().flatten().tolist(), (last[row].nonzero().flatten() + 1).tolist()):
            first = int(document[row, begin])
            if begin > first and end - begin >= 2:
                spans.append((row, first, begin, end))
    return spans


def _conversation_firsts(batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """[B, L] whether a token begins a conversation: each row's first, and where a packed row's
    position ids restart at 0."""
    positions = batch.get("position_ids")
    firsts = (positions == 0) if positions is not None else torch.zeros_like(mask)
    return firsts | (torch.arange(mask.shape[1], device=mask.device) == 0)


def _answer_starts(mask: torch.Tensor, firsts: torch.Tensor) -> torch.Tensor:
    """[B, L] whether a token begins an answer: a loss-mask token after a token outside the mask, or
    at a conversation's start (an answer never runs on into the next conversation)."""
    return mask & (~torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False) | firsts)


def answer_coordinates(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] turn and offset of every token: the index of its answer (a run of loss-mask tokens)
    within its conversation (documents of a packed row restart their position ids at 0), and its
    distance from that answer's first token. Meaningless outside answers."""
    mask = batch["loss_mask"].bool()
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    firsts = _conversation_firsts(batch, mask)
    starts = _answer_starts(mask, firsts)
    offset = index - torch.where(starts, index, 0).cummax(1).values
    answers = starts.long().cumsum(1)
    before = torch.where(firsts, answers - starts.long(), 0).cummax(1).values  # answers begun before this conversation
    return answers - before - 1, offset
