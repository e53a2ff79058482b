"""Token distributions after temperature, top-k and top-p, applied the same way to the base model
(target) and the draft heads, so that speculative sampling compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen, and seeded; temperature 0 is greedy. The one sampling config:
    `draftheads eval` and `draftheads gen-data` compose it (`sampling.temperature=...`)."""

    temperature: float = 0.0
    """0 = greedy (argmax); > 0 samples from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = all)."""
    seed: int = 0
    """Seeds sampled decoding: each turn or record derives its own seed from this one (greedy
    decoding ignores it)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax."""
        return self.temperature == 0

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [..., V] (float32) after temperature, top-k and top-p; tokens filtered
        out get -inf. Greedy configs use temperature 1 here (only the ranking matters to them)."""
        logits = logits.float()
        if self.temperature > 0:
            logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            sorted_probs = torch.softmax(sorted_logits, dim=-1)
            # drop a token when the tokens ranked above it already reach top_p (the first stays)
            drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return torch.log_softmax(logits, dim=-1)


def sample(logprobs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn from a [V] log-probability vector."""
    return int(torch.multinomial(logprobs.exp(), 1, generator=generator))


def gumbel_top_k(logprobs: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k tokens per row of [N, V] log-probabilities, drawn without replacement, in draw order.

    The top-k of log-probabilities plus i.i.d. Gumbel noise is distributed exactly as k sequential
    draws without replacement (the Gumbel-top-k trick), in one vectorised call. Rows must have at
    least k tokens of nonzero probability.
    """
    return torch.topk(logprobs + gumbel_noise(logprobs.shape, generator, logprobs.device), k, dim=-1).indices


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """I.i.d. standard Gumbel noise: argmax(log-probabilities + noise) is a draw from them."""
    uniform = torch.rand(shape, generator=generator, device=device).clamp_(min=1e-20)
    return -torch.log(-torch.log(uniform))
