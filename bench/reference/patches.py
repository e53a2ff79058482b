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


def count_steps(ea_model) -> list[int]:
    """Record, per verification step of SafeAILab's `eagenerate`, the length of the sequence returned
    so far (its `tree_decoding` is called once a step with it); returns the list it fills, cleared
    by the caller before each answer. Nothing the step computes changes."""
    lengths: list[int] = []
    decode = ea_model.tree_decoding

    def counted(model, candidates, cache, positions, input_ids, *rest):
        lengths.append(input_ids.shape[1])
        return decode(model, candidates, cache, positions, input_ids, *rest)

    ea_model.tree_decoding = counted
    return lengths


def eagle_answer(result, prompt: list[int], lengths: list[int], seconds: float) -> dict:
    """One answer's record: its tokens, steps, and tokens returned after each step (a step's bonus
    token is returned with the next)."""
    after = [n - len(prompt) for n in lengths[1:]] + [result.shape[1] - len(prompt)]
    return {"tokens": result[0, len(prompt):].tolist(), "steps": len(lengths), "after_step": after, "seconds": seconds}
