"""The `hf` generation backend: batched `generate` with the transformers model in this process.

Prompts are bucketed by length (so a batch pads little), left-padded, and decoded with the model's
KV cache. Sampling uses one random generator per request, seeded from the record: each row draws
its own Gumbel noise and takes the argmax of log-probabilities plus noise (the Gumbel-max trick,
exactly a draw from the filtered distribution), so a record's answer depends on its own seed and
not on which other prompts share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import LogitsProcessor, LogitsProcessorList

from draftheads.decoding.sampling import SamplingConfig
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


class _SeededSampling(LogitsProcessor):
    """Turns greedy search into sampling with one generator per row (Gumbel-max)."""

    def __init__(self, sampling: SamplingConfig, seeds: list[int], device: torch.device):
        self.sampling = sampling
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = self.sampling.logprobs(scores)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        return logprobs - torch.log(-torch.log(uniform.clamp_(min=1e-20)))


class HFGenerator:
    """Answers requests with `backbone.model.generate`, `batch_size` prompts at a time."""

    def __init__(self, backbone: Backbone, sampling: SamplingConfig, batch_size: int, eos_token_ids: tuple[int, ...]):
        self.backbone = backbone
        self.sampling = sampling
        self.batch_size = batch_size
        self.eos = list(eos_token_ids)
        tokenizer = backbone.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        self.pad = int(pad)
        self.device = backbone.lm_head.weight.device

    def generate(self, requests: list[GenRequest]) -> list[GenAnswer]:
        """Answers in the order of `requests`."""
        answers: list[GenAnswer | None] = [None] * len(requests)
        # Buckets: same answer cap (so no row is cut short for another's sake), then by prompt length.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, len(requests[i].prompt_ids)))
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size or requests[batch[0]].max_new_tokens != requests[i].max_new_tokens):
                self._run(requests, batch, answers)
                batch = []
            batch.append(i)
        if batch:
            self._run(requests, batch, answers)
        return answers  # type: ignore[return-value]

    @torch.inference_mode()
    def _run(self, requests: list[GenRequest], batch: list[int], answers: list[GenAnswer | None]) -> None:
        rows = [requests[i] for i in batch]
        length = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, request in enumerate(rows):
            n = len(request.prompt_ids)
            ids[row, length - n :] = torch.tensor(request.prompt_ids)  # left padding: every row ends at the same column
            attention[row, length - n :] = 1
        config = HFGenerationConfig(
            max_new_tokens=rows[0].max_new_tokens, do_sample=False, eos_token_id=self.eos or None, pad_token_id=self.pad
        )
        processors = LogitsProcessorList()
        if not self.sampling.greedy:
            processors.append(_SeededSampling(self.sampling, [r.seed for r in rows], self.device))
        out = self.backbone.model.generate(
            ids.to(self.device), attention_mask=attention.to(self.device), generation_config=config, logits_processor=processors
        )
        new = out[:, length:].tolist()
        for row, i in enumerate(batch):
            tokens = new[row]
            end = next((t for t, token in enumerate(tokens) if token in self.eos), None)
            if end is None:
                kept, count, reason = tokens, len(tokens), "length"
            else:
                kept, count, reason = tokens[:end], end + 1, "stop"
            text = self.backbone.tokenizer.decode(kept, skip_special_tokens=True)
            answers[i] = GenAnswer(text=text, tokens=count, finish_reason=reason)
