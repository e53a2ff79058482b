"""What every head family is: a config dataclass and an `nn.Module` with two duties.

Training: `forward(features, input_ids, position_ids)` returns one hidden state per draft depth at
every position t; depth k (1-based) predicts the token k steps after the next one, i.e. token
t+1+k. Sequential families (Hydra, Clover, EAGLE) read the true tokens t+1..t+k from `input_ids`
(teacher forcing with exactly the tokens a drafted path would hold); parallel ones (Medusa) ignore
them. `position_ids` (packed rows: restarting at 0 per document; None: 0..T-1) keep families that
attend over the sequence within one document. A family that predicts features (Clover-2, EAGLE)
returns them as `predicted_features`, and the trainer regresses them onto the backbone's.
`project(depth, states, lm_head)` maps states to logits over the heads' draft vocabulary; it is
separate so that losses project only the positions they train on, in chunks (a vocabulary-wide
projection dominates the cost).

Draft vocabulary: with `draft_vocab_size: N` the heads project onto N tokens only (the most frequent
trained-on targets of the training data, as EAGLE-3 does), listed in the `draft_to_token` buffer
(saved with the weights, so a reload never recomputes it). Logits and log-probabilities of
`project` and `draft_step` are then over those N tokens, index i standing for token
`draft_to_token[i]`; without it (0) they are over the whole vocabulary and index i is token i.

Drafting: `begin_draft(features, input_ids, previous)` takes the features of the tokens just
accepted (the last is position t) and the state it returned the step before (None after the
prompt), and returns the family's drafting state (families with their own KV cache extend it);
`draft_step(state, paths, lm_head)` takes N partial tree paths of length d, shape [N, d] (column 0
is the tree root, token t+1, the base model's own next token; column j the token drafted at depth
j), and returns log-probabilities of depth d, i.e. of token t+1+d, shape [N, draft vocabulary].
Training feeds sequential heads the same tokens (t+1..t+d from the data), so drafting and training
agree on the same path. This pair is all the decoding engine needs; it never asks which family it
has.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import MappingProxyType
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.utils.errors import ConfigError
from draftheads.utils.typed_config import from_dict


@dataclass
class BaseModelInfo:
    """The base model heads were trained on; loading refuses a base that differs."""

    model: str
    """Model spec as given to training (Hub id, folder, GGUF file or demo name)."""
    revision: str | None
    """Hub revision, if any."""
    hidden_size: int
    """Width of the base model's hidden states."""
    vocab_size: int
    """Rows of the base model's lm_head."""
    tokenizer_fingerprint: str
    """Hash of vocabulary, special tokens and chat template (see `tokenizer_fingerprint`)."""
    hub_id: str | None = None
    """The base model's Hub id when known (written as `base_model` in the model card)."""
    tokenizer_parts: dict[str, str] | None = None
    """The fingerprint's parts (`tokenizer_parts`): what a refusal names when the fingerprints
    differ (None: the config holds no parts)."""


@dataclass
class TreeChoice:
    """The static tree `draftheads tree` picked for these heads on some machine; eval and users
    get it by default (`--tree auto`)."""

    paths: list[list[int]]
    """Medusa-style rank paths, e.g. [[0], [1], [0, 0]] (root excluded)."""
    expected_tau: float
    """Predicted tokens per verification step with this tree (greedy)."""
    expected_speedup: float
    """Predicted speedup over autoregressive decoding from the measured verify/draft costs."""
    measured_on: str = ""
    """Calibration prompts and hardware the choice was made on."""


@dataclass
class HeadConfig:
    """Settings every family shares. Families subclass this and add a `head_type` tag field."""

    num_heads: int = 4
    """Draft depth K: head k predicts the token k steps after the next one."""
    base: BaseModelInfo | None = None
    """Filled in from the backbone when training starts; checked when heads are loaded."""
    tree: TreeChoice | None = None
    """Default static draft tree, written by `draftheads tree`."""
    draft_vocab_size: int = 0
    """Project drafts onto this many tokens only: the most frequent trained-on target tokens of the
    training data, counted when training starts (the map is saved with the weights). Targets outside
    it cannot be drafted; the trainer reports their share. 0: the whole vocabulary."""

    head_type = "?"  # set by @register_head; also written as the dataclass field of each family
    renamed = MappingProxyType({})  # field aliases a family accepts -> the field each stands for (loaded with a warning)

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {self.num_heads}")
        if self.draft_vocab_size < 0:
            raise ValueError(f"draft_vocab_size must be at least 0, got {self.draft_vocab_size}")

    def trained_depths(self) -> int:
        """Depths the training forward returns states for (1..this); drafting always goes
        `num_heads` deep. A family that trains fewer depths than it drafts (EAGLE-1: one step on
        the backbone's own features) says so here."""
        return self.num_heads

    def training_problems(self) -> list[str]:
        """Settings these heads can be loaded with but not trained with, each "field: why" (the
        trainer refuses to start on any)."""
        return []

    def feature_layers(self) -> tuple[int, ...]:
        """Backbone layers the heads read (`LAST` = the final normed hidden state)."""
        return (LAST,)

    @classmethod
    def __from_config__(cls, value: Any, where: str) -> "HeadConfig":
        """Build the config of the family named by `value["head_type"]` (typed_config hook)."""
        from draftheads.models.registry import HEADS

        if not isinstance(value, dict) or "head_type" not in value:
            raise ConfigError(f"{where}.head_type: required key is missing (one of: {', '.join(HEADS.names())})")
        config_class = HEADS.config_class(value["head_type"], f"{where}.head_type")
        value = dict(value)
        for old, new in config_class.renamed.items():
            if old in value:
                if new in value:
                    raise ConfigError(f"{where}.{old}: the old name of {where}.{new}; give one of them")
                warnings.warn(f"{where}.{old} is deprecated: it is now {where}.{new} (same meaning)", FutureWarning, stacklevel=2)
                value[new] = value.pop(old)
        return from_dict(config_class, value, where)

    def to_json_dict(self) -> dict:
        """The config as written to config.json (`head_type` first)."""
        data = dataclasses.asdict(self)
        return {"head_type": data.pop("head_type"), **data}


@dataclass
class HeadOutput:
    """What a training forward returns."""

    states: list[torch.Tensor]
    """One [batch, seq, hidden] tensor per depth 1..d (d: what `forward` was asked for, by default
    `config.trained_depths()`)."""
    aux_losses: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Extra loss terms a family adds, already weighted (per-micro-batch means)."""
    predicted_features: list[torch.Tensor] | None = None
    """Per depth k, [batch, seq, hidden]: the family's estimate of the backbone's hidden state at
    t+k (what predicts token t+1+k); regressed when `train.loss.feature_weight` > 0."""


class DraftHeads(nn.Module):
    """Base class of every family; see the module docstring for the contract."""

    config_class: type[HeadConfig] = HeadConfig
    head_type: str = "?"

    def __init__(self, config: HeadConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        """Rows of the base lm_head (the full vocabulary)."""
        if config.draft_vocab_size > vocab_size:
            raise ValueError(f"draft_vocab_size {config.draft_vocab_size} exceeds the base vocabulary ({vocab_size})")
        # draft index -> token id; a placeholder until `use_draft_vocab` or a load fills it
        reduced = bool(config.draft_vocab_size)
        self.register_buffer("draft_to_token", torch.arange(config.draft_vocab_size) if reduced else None, persistent=reduced)
        self._projection_cache: tuple | None = None
        self._lookup_cache: tuple | None = None

    @property
    def draft_vocab(self) -> int:
        """Size of the vocabulary the heads project onto."""
        return self.config.draft_vocab_size or self.vocab_size

    def use_draft_vocab(self, tokens: torch.Tensor, lm_head: nn.Module) -> None:
        """Set the draft vocabulary to `tokens` (distinct ids, [draft_vocab_size]); projections the
        family owns (`own_projections`) restart as the lm_head's rows of those tokens."""
        if self.draft_to_token is None or tokens.shape != self.draft_to_token.shape:
            raise ValueError(f"a draft vocabulary of {tokens.numel()} tokens does not fit draft_vocab_size {self.config.draft_vocab_size}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size or tokens.unique().numel() != tokens.numel():
            raise ValueError(f"draft vocabulary tokens must be distinct ids below {self.vocab_size}")
        with torch.no_grad():
            self.draft_to_token.copy_(tokens)
            for projection in self.own_projections():
                projection.weight.copy_(lm_head.weight[tokens.to(lm_head.weight.device)])

    def own_projections(self) -> list[nn.Linear]:
        """Vocabulary matrices the family trains itself (rows = draft vocabulary), if any."""
        return []

    def token_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary index of each token id, -100 (cross-entropy's ignore index) for tokens
        outside it."""
        if self.draft_to_token is None:
            return tokens
        # built once per map (the loss calls this per chunk and depth), rebuilt if the map changes
        key = (self.draft_to_token.data_ptr(), self.draft_to_token._version, self.draft_to_token.device)
        if self._lookup_cache is None or self._lookup_cache[0] != key:
            lookup = torch.full((self.vocab_size,), -100, dtype=torch.long, device=self.draft_to_token.device)
            lookup[self.draft_to_token] = torch.arange(self.draft_to_token.numel(), device=lookup.device)
            self._lookup_cache = (key, lookup)
        return self._lookup_cache[1][tokens.to(self.draft_to_token.device)].to(tokens.device)

    def to_tokens(self, index: torch.Tensor) -> torch.Tensor:
        """Token ids of draft-vocabulary indices."""
        return index if self.draft_to_token is None else self.draft_to_token.to(index.device)[index]

    def shared_projection(self, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits of the base lm_head restricted to the draft vocabulary's rows."""
        if self.draft_to_token is None:
            return lm_head(states)
        weight, bias = self._draft_rows(lm_head)
        return F.linear(states, weight, bias)

    def _draft_rows(self, lm_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Without a graph (drafting, frozen lm_head) the rows are gathered once and kept until the
        # lm_head or the map changes: the gather copies as many bytes as the projection reads.
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        index = self.draft_to_token.to(weight.device)
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight[index], None if bias is None else bias[index]
        key = (weight.data_ptr(), weight._version, weight.dtype, self.draft_to_token.data_ptr(), self.draft_to_token._version)
        if self._projection_cache is None or self._projection_cache[0] != key:
            rows = (weight[index].detach(), None if bias is None else bias[index].detach())
            self._projection_cache = (key, rows)
        return self._projection_cache[1]

    def forward(
        self,
        features: dict[int, torch.Tensor],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        depths: int | None = None,
    ) -> HeadOutput:
        """Per-depth states at every position: depths 1..`depths` (default: the trained ones,
        `config.trained_depths()`; at most `num_heads`, computed as drafting computes them)."""
        raise NotImplementedError

    def project(self, depth: int, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits over the draft vocabulary of depth `depth` (1-based) for `states` [..., hidden]."""
        raise NotImplementedError

    def max_draft_depth(self) -> int | None:
        """How deep these heads can draft: their `num_heads` (one head per depth), or None when
        drafting repeats one module over its own outputs and goes as deep as a tree asks."""
        return self.config.num_heads

    def begin_draft(self, features: dict[int, torch.Tensor], input_ids: torch.Tensor, previous: Any = None) -> Any:
        """Drafting state from the features [1, n, hidden] of the n tokens just accepted and the
        previous step's state (None right after the prompt)."""
        raise NotImplementedError

    def draft_step(self, state: Any, paths: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Log-probabilities [N, draft vocabulary] of depth d for N paths [N, d] (root token first)."""
        raise NotImplementedError

    @classmethod
    def build(cls, config: HeadConfig, backbone: Backbone) -> "DraftHeads":
        """New heads for `backbone`, initialised as the family prescribes, in its dtype and on its
        device (a reduced draft vocabulary starts as a placeholder: see `use_draft_vocab`)."""
        raise NotImplementedError
