"""Helpers shared by tests (importable as `helpers`: pytest puts tests/ on the path)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_llama_config(vocab_size: int = 128, layers: int = 2, hidden: int = 64, init_std: float = 0.02):
    """A 2-layer Llama with hidden size 64: real modeling code, milliseconds per forward.

    With the default init a random model repeats one token forever; `init_std=0.3` gives varied
    greedy continuations, which decoding tests need."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )


def write_jsonl(path: Path, records: list) -> Path:
    """Write records as JSON lines (strings are written verbatim, to make malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
