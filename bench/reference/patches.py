"""What the reference drivers change in the reference codes, and why: nothing that touches how
they read a draft (the names, shapes and configs under test)."""

import json
from pathlib import Path


def rope_base(base: str, *classes) -> None:
    """Give the reference's RoPE the base model's theta: these releases build every
    LlamaRotaryEmbedding with base 10,000 whatever the config says (Llama-2-era bases), so on a base
    with another theta (the demo's 100,000) they would decode another model. Nothing else changes."""
    theta = json.loads((Path(base) / "config.json").read_text()).get("rope_theta", 10000.0)
    for cls in classes:
        cls.__init__.__defaults__ = (2048, theta, None)
