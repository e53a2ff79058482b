"""The `hf` generation backend: batched generation with the transformers model in this process.

Prompts are bucketed by length and a batch holds at most `max_batch_tokens` padded prompt tokens
(so one long prompt does not make many short ones pay for its padding), left-padded, and decoded
with the model's own forward and KV cache. A row that ends its answer leaves the batch and the cache
at once (`Cache.batch_select_indices`), so the rest do not pay for it. Sampling uses one random
generator per request, seeded from the record: each row draws its own Gumbel noise and takes the
argmax of log-probabilities plus noise (the Gumbel-max trick, exactly a draw from the filtered
distribution), so a record's answer depends on its own seed and not on its batch-mates.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from draftheads.decoding.sampling import SamplingConfig, gumbel_noise
from draftheads.models.backbone import Backbone


@dataclass
class GenRequest:
    """One answer to generate."""

    messages: list[dict[str, str]]
    """The conversation so far, ending with the user turn to answer."""
    prompt_ids: list[int]
    """The same, rendered with the chat template and its generation prompt."""
    max_new_tokens: int
    """Most tokens for this answer (already capped to what fits in the context)."""
    seed: int
    """This request's own random seed."""


@dataclass
class GenAnswer:
    """One generated answer."""

    text: str
    tokens: int
    """Tokens generated (the end-of-turn token included when the model emitted it)."""
    finish_reason: str
    """stop (the model ended its turn) or length (max_new_tokens reached)."""


class HFGenerator:
    """Answers requests with the model's forward and KV cache, `batch_size` prompts at a time."""

    def __init__(
        self, backbone: Backbone, sampling: SamplingConfig, batch_size: int, eos_token_ids: tuple[int, ...],
        max_batch_tokens: int | None = None,
    ):
        self.backbone = backbone
        self.sampling = sampling
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.eos = frozenset(eos_token_ids)  # checked for every generated token
        tokenizer = backbone.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos, default=0)
        self.pad = int(pad)
        self.device = backbone.lm_head.weight.device
        # The prefill needs only the last position's logits ([batch, prompt, vocab] would be GBs).
        forward = inspect.signature(backbone.model.forward).parameters
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        # transformers >= 5.24 names the KV cache `cache` (argument and output); before, `past_key_values`.
        self._cache_name = "cache" if "cache" in forward else "past_key_values"

    def generate(self, requests: list[GenRequest], on_tokens: Callable[[int], None] | None = None) -> list[GenAnswer]:
        """Answers in the order of `requests`; `on_tokens(n)` after each batch (for progress)."""
        answers: list[GenAnswer | None] = [None] * len(requests)
        # Buckets: same answer cap (so no row is cut short for another's sake), then by prompt length.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, len(requests[i].prompt_ids)))
        batch: list[int] = []
        for i in order:
            # Sorted by length, so request i is the longest in the batch: it sets the padded size.
            padded = (len(batch) + 1) * len(requests[i].prompt_ids)
            full = len(batch) == self.batch_size or (self.max_batch_tokens is not None and padded > self.max_batch_tokens)
            if batch and (full or requests[batch[0]].max_new_tokens != requests[i].max_new_tokens):
                self._run(requests, batch, answers, on_tokens)
                batch = []
            batch.append(i)
        if batch:
            self._run(requests, batch, answers, on_tokens)
        return answers  # type: ignore[return-value]

    @torch.inference_mode()
    def _run(self, requests: list[GenRequest], batch: list[int], answers: list[GenAnswer | None], on_tokens) -> None:
        """Prefill the left-padded batch, then decode; a row that ends its answer leaves the batch
        (and the KV cache) at once, so finished answers cost nothing while the others go on."""
        rows = [requests[i] for i in batch]
        length = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, request in enumerate(rows):
            n = len(request.prompt_ids)
            ids[row, length - n :] = torch.tensor(request.prompt_ids)  # left padding: every row ends at the same column
            attention[row, length - n :] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in rows] if not self.sampling.greedy else []
        alive = list(range(len(rows)))
        generated: list[list[int]] = [[] for _ in rows]
        limit = rows[0].max_new_tokens
        out = self.backbone.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **self._last_only)
        cache = getattr(out, self._cache_name)
        next_position = positions[:, -1] + 1
        while True:
            tokens = self._pick(out.logits[:, -1], [generators[j] for j in alive] if generators else None)
            keep = []
            for k, (j, token) in enumerate(zip(alive, tokens.tolist())):
                generated[j].append(token)
                if token not in self.eos and len(generated[j]) < limit:
                    keep.append(k)
            if not keep:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention, next_position, tokens = attention[index], next_position[index], tokens[index]
                alive = [alive[k] for k in keep]
            attention = torch.cat([attention, attention.new_ones(len(alive), 1)], dim=1)
            out = self.backbone.model(
                input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position[:, None],
                use_cache=True, **{self._cache_name: cache},
            )
            next_position = next_position + 1
        for row, i in enumerate(batch):
            tokens = generated[row]
            ended = bool(tokens) and tokens[-1] in self.eos
            text = self.backbone.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True)
            answers[i] = GenAnswer(text=text, tokens=len(tokens), finish_reason="stop" if ended else "length")
        if on_tokens is not None:
            on_tokens(sum(len(tokens) for tokens in generated))

    def _pick(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        """Next token per row: argmax, or a draw from the filtered distribution with each row's own
        generator (argmax of log-probabilities plus that row's Gumbel noise)."""
        if generators is None:
            return logits.argmax(-1)
        logprobs = self.sampling.logprobs(logits)
        noise = torch.stack([gumbel_noise(logits.shape[-1], g, logits.device) for g in generators])
        return (logprobs + noise).argmax(-1)
