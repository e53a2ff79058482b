"""The one decoding engine: draft a tree with the heads, verify all of it in one backbone forward
over the engine's KV cache, accept, commit (compact the cache to the accepted path), repeat.

Plain autoregressive decoding is the same loop with a root-only tree, so speedups compare like
with like. A lookup branch (`TreeSpec.lookup`; greedy or typical acceptance) adds tokens copied
from the context to the drafted tree before verification; on a root-only tree that is
prompt-lookup decoding. The engine never asks which head family it drives: it calls `begin_draft`
with the features of the tokens just committed (and the previous drafting state) and `draft_step`
through a drafter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from draftheads.decoding.acceptance import Accepted, accept_greedy, accept_sampling, accept_typical
from draftheads.decoding.cache import KVCache, install_tree_attention, unsupported_attention
from draftheads.decoding.drafting import Draft, DynamicDrafter, RerankedDrafter, StaticDrafter
from draftheads.decoding.lookup import graft, lookup_continuation
from draftheads.decoding.sampling import SamplingConfig, sample
from draftheads.decoding.tree import DRAFTED, Tree, TreeSpec
from draftheads.models.backbone import LAST, Backbone, default_eos
from draftheads.models.heads.base import DraftHeads
from draftheads.utils.device import synchronize
from draftheads.utils.errors import ModelLoadError


@dataclass
class GenerationConfig:
    """What to generate and when to stop."""

    max_new_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    acceptance: Literal["auto", "greedy", "typical", "sampling"] = "auto"
    """auto: greedy at temperature 0, lossless speculative sampling above it."""
    typical_epsilon: float = 0.09
    """Typical acceptance: hard probability threshold (Medusa's posterior_threshold)."""
    typical_delta: float = 0.3
    """Typical acceptance: entropy-scaled threshold (Medusa's posterior_alpha)."""
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None
    """None: the tokenizer's and the model's generation-config EOS tokens."""
    seed: int | None = None

    def rule(self) -> str:
        """The acceptance rule actually used."""
        if self.acceptance == "auto":
            return "greedy" if self.sampling.greedy else "sampling"
        if self.acceptance == "greedy" and not self.sampling.greedy:
            raise ValueError("greedy acceptance needs temperature 0; use sampling or typical above it")
        if self.acceptance in ("sampling", "typical") and self.sampling.greedy:
            raise ValueError(f"{self.acceptance} acceptance needs temperature > 0")
        return self.acceptance


@dataclass
class GenerationResult:
    """Tokens and what it took to produce them."""

    tokens: list[int]
    finish_reason: str
    """eos, stop_string or length."""
    accepted: list[int] = field(default_factory=list)
    """Per verification step, the tokens it emitted less one: the accepted drafts, or at the last step
    those before the stop (an EOS, a stop string or the token limit). So 1 + sum + steps = tokens."""
    tree_sizes: list[int] = field(default_factory=list)
    """Drafted nodes (root excluded) verified at each step."""
    predicted: list[float] = field(default_factory=list)
    """Per step (dynamic trees): 1 + sum of the nodes' joint draft probabilities."""
    times: dict[str, float] = field(default_factory=dict)
    """Seconds in prefill, draft, verify, accept (acceptance + cache compaction), other."""

    @property
    def steps(self) -> int:
        """Verification steps taken."""
        return len(self.accepted)

    @property
    def tau(self) -> float:
        """Mean tokens emitted per verification step, the bonus token included."""
        return 1 + sum(self.accepted) / len(self.accepted) if self.accepted else 1.0


class Engine:
    """Speculative (or, with no heads / kind none, autoregressive) decoding at batch size 1.

    `kernels`: "auto" (Triton on CUDA, PyTorch elsewhere), "triton" or "reference"."""

    def __init__(
        self, backbone: Backbone, heads: DraftHeads | None = None, tree: TreeSpec | None = None, kernels: str = "auto"
    ):
        tree = tree or TreeSpec()
        if not tree.resolved:
            raise ValueError(f"tree kind {tree.kind} with lookup {tree.lookup}: a choice `draftheads eval` resolves (resolve_tree); "
                             f"the engine drafts {', '.join(DRAFTED)} trees with a lookup length")
        if tree.kind != "none" and heads is None:
            raise ValueError(f"a {tree.kind} tree needs draft heads")
        problems = unsupported_attention(backbone.model)
        if problems:
            model_type = backbone.model.config.get_text_config().model_type
            raise ModelLoadError(
                f"{model_type}: the decoding engine does not implement {'; '.join(problems)}, so its output would differ "
                "from the model's own; decode this model with HF generate"
            )
        install_tree_attention(backbone.model)
        self.backbone = backbone
        self.heads = heads if tree.kind != "none" else None
        self.tree_spec = tree
        self.layers = tuple(heads.config.feature_layers()) if self.heads is not None else (LAST,)
        if LAST not in self.layers:
            self.layers = self.layers + (LAST,)
        self.device = backbone.lm_head.weight.device
        self.drafter: StaticDrafter | DynamicDrafter | RerankedDrafter
        self.static_mask: torch.Tensor | None = None
        if tree.kind in ("dynamic", "eagle2"):
            grown = DynamicDrafter if tree.kind == "dynamic" else RerankedDrafter
            self.drafter = grown(tree.budget, tree.width, self._depth_allowed(tree.depth or heads.config.num_heads))
        else:
            # autoregressive decoding is the static tree made of the root alone
            if tree.kind == "static" and not tree.paths:
                raise ValueError("a static tree needs at least one path")
            template = Tree.from_paths(tree.paths if tree.kind == "static" else [])
            self.drafter = StaticDrafter(template, self._depth_allowed(int(template.depth.max())) if self.heads is not None else 0)
            self.static_mask = template.ancestor_mask().to(self.device)  # once, not per step
        self.max_nodes = self.drafter.max_nodes + tree.lookup
        """Most nodes (root included) a step verifies: the drafted tree and the lookup branch."""
        self.cache = KVCache(0, backbone.num_layers, kernels)

    def _depth_allowed(self, depth: int) -> int:
        """`depth`, when the heads can draft that deep (else the reason)."""
        limit = self.heads.max_draft_depth()
        if limit is not None and depth > limit:
            raise ValueError(f"a tree {depth} deep: {self.heads.config.head_type} heads draft one head per depth, {limit} deep")
        return depth

    def default_eos(self) -> tuple[int, ...]:
        """EOS tokens of the tokenizer and of the model's generation config."""
        return default_eos(self.backbone)

    def _forward(self, tokens: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor | None, logits: bool):
        """One forward over the cache: a tree under its ancestor `mask`, or (mask None) the prompt,
        causally, through SDPA's causal path (no n x n mask is built, however long the prompt)."""
        positions = (depth + self.cache.length).to(self.device)
        return self.backbone.features(
            tokens.to(self.device)[None],
            attention_mask=None if mask is None else mask.to(self.device)[None, None],
            position_ids=positions[None],
            layers=self.layers,
            logits=logits,
            draftheads_cache=self.cache,
            draftheads_causal=mask is None,
        )

    def prefill(self, prompt: torch.Tensor, room: int):
        """Begin a sequence: empty the cache with room for `room` tokens after `prompt` [n], run the
        prompt causally and commit it. Returns the forward's output (features, no logits)."""
        n = prompt.numel()
        self.cache.reset(n + room)
        out = self._forward(prompt, torch.arange(n), None, logits=False)
        self.cache.commit(list(range(n)))
        return out

    def draft(self, state, root: int, sampling: SamplingConfig, generator: torch.Generator | None = None, sampled: bool = False) -> Draft:
        """The heads' tree under `root`, from the drafting `state` (`DraftHeads.begin_draft`)."""
        return self.drafter.draft(self.heads, state, root, self.backbone.lm_head, sampling, generator, sampled)

    def verify(self, tokens: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor):
        """One verification forward of a tree's `tokens` (at `depth`, under the ancestor `mask`) after
        the committed sequence, with logits; its entries stay pending until `commit`."""
        return self._forward(tokens, depth, mask, logits=True)

    def commit(self, nodes: list[int]) -> None:
        """Keep the verified `nodes` after the committed sequence and drop the other pending entries
        (`commit([])` drops them all: the next verification follows the same sequence)."""
        self.cache.commit(nodes)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int] | torch.Tensor, config: GenerationConfig | None = None) -> GenerationResult:
        """New tokens after `prompt_ids` (one sequence)."""
        config = config or GenerationConfig()
        rule = config.rule()
        if self.tree_spec.lookup and rule == "sampling":
            raise ValueError(
                "a lookup branch (tree lookup > 0) needs greedy or typical acceptance: copied tokens have no draft "
                "distribution, so speculative sampling could not stay exact"
            )
        sampling = config.sampling
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long).flatten()
        if prompt.numel() == 0:
            raise ValueError("the prompt is empty")
        if config.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
        eos = set(config.eos_token_ids if config.eos_token_ids is not None else self.default_eos())
        generator = torch.Generator(device=self.device)
        if config.seed is not None:
            generator.manual_seed(config.seed)
        else:
            generator.seed()  # a fresh nondeterministic seed, leaving torch's global RNG alone
        context = prompt.tolist()  # what a lookup branch copies from; the emitted tokens join it
        result = GenerationResult(
            tokens=[], finish_reason="length", times=dict.fromkeys(("prefill", "draft", "verify", "accept", "other"), 0.0)
        )
        stopper = _Stopper(self.backbone.tokenizer, eos, config.stop_strings, config.max_new_tokens, result)
        watch = _Stopwatch(self.device, result.times)

        out = self.prefill(prompt, config.max_new_tokens + self.max_nodes)
        last = self.backbone.logits(out.features[LAST][0, -1:])[0]
        root = int(last.argmax()) if sampling.greedy else sample(sampling.logprobs(last), generator)
        state = self.heads.begin_draft(out.features, prompt[None]) if self.heads is not None else None
        watch.lap("prefill")
        done = stopper.emit(root)
        while not done:
            draft = self.draft(state, root, sampling, generator, rule == "sampling")
            if self.tree_spec.lookup:
                context.extend(result.tokens[len(context) - prompt.numel() :])
                draft = graft(draft, lookup_continuation(context, self.tree_spec.lookup, self.tree_spec.lookup_ngram))
            # the static template's mask holds unless the lookup branch added nodes to it
            reuse = self.static_mask is not None and draft.tree.size == self.drafter.max_nodes
            if draft.scores is not None:
                result.predicted.append(1 + float(draft.scores[1:].exp().sum()))
            watch.lap("draft")
            out = self.verify(draft.tokens, draft.tree.depth, self.static_mask if reuse else draft.tree.ancestor_mask())
            watch.lap("verify")
            accepted = self._accept(rule, draft, out.logits[0], config, generator)
            self.commit(accepted.nodes)
            watch.lap("accept")
            done = self._emit(stopper, draft, accepted)
            root = accepted.bonus
            watch.lap(None)
            if not done and self.heads is not None:
                features = {layer: value[:, torch.tensor(accepted.nodes, device=self.device)] for layer, value in out.features.items()}
                state = self.heads.begin_draft(features, draft.tokens[accepted.nodes][None].to(self.device), state)
            watch.lap("draft")
        watch.finish("other")
        return result

    @staticmethod
    def _emit(stopper: "_Stopper", draft: Draft, accepted: Accepted) -> bool:
        """Emit a step's accepted drafts and its bonus token until a stop; records the step's τ
        count: what it emitted (drafts accepted past an EOS, a stop string or the limit are not
        output). True when generation ends."""
        result = stopper.result
        result.tree_sizes.append(draft.tree.size - 1)
        emitted, done = len(result.tokens), False
        for node in accepted.nodes[1:]:
            done = stopper.emit(int(draft.tokens[node]))
            if done:
                break
        if not done:
            done = stopper.emit(accepted.bonus)
        result.accepted.append(len(result.tokens) - emitted - 1)
        return done

    def _accept(
        self, rule: str, draft: Draft, logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator
    ) -> Accepted:
        if rule == "greedy":
            return accept_greedy(draft.tree, draft.tokens, logits.argmax(-1).cpu())
        target = config.sampling.logprobs(logits)
        if rule == "typical":
            return accept_typical(
                draft.tree, draft.tokens.to(target.device), target, config.typical_epsilon, config.typical_delta, generator
            )
        return accept_sampling(draft.tree, draft.tokens, target, draft.draft_logprobs, generator)


class _Stopwatch:
    """Seconds per phase of the decode loop into `times`: each lap ends with a device
    synchronisation, so work queued on a GPU is charged to the phase that queued it."""

    def __init__(self, device: torch.device, times: dict[str, float]):
        self.device, self.times = device, times
        self.start = self.last = time.perf_counter()

    def lap(self, phase: str | None) -> None:
        """Charge the time since the last lap to `phase` (None: to no phase, so to `finish`'s)."""
        if phase is None:
            self.last = time.perf_counter()
            return
        synchronize(self.device)
        now = time.perf_counter()
        self.times[phase] += now - self.last
        self.last = now

    def finish(self, phase: str) -> None:
        """Charge everything no lap claimed, since the first, to `phase`."""
        self.times[phase] = time.perf_counter() - self.start - sum(v for k, v in self.times.items() if k != phase)


class _Stopper:
    """Appends emitted tokens and says when generation must end."""

    def __init__(self, tokenizer, eos: set[int], stop_strings: tuple[str, ...], limit: int, result: GenerationResult):
        self.tokenizer, self.eos, self.stop_strings, self.limit, self.result = tokenizer, eos, stop_strings, limit, result
        # a stop string completes within this many trailing tokens (every token is at least a byte)
        self.window = max((len(s.encode()) for s in stop_strings), default=0) + 2

    def emit(self, token: int) -> bool:
        tokens = self.result.tokens
        tokens.append(token)
        if token in self.eos:
            self.result.finish_reason = "eos"
            return True
        if self.stop_strings:
            tail = self.tokenizer.decode(tokens[-self.window :])
            if any(s in tail for s in self.stop_strings):
                self.result.finish_reason = "stop_string"
                return True
        if len(tokens) >= self.limit:
            self.result.finish_reason = "length"
            return True
        return False
