"""Claim: the demo base model loads in under a second from the converted cache, with the same logits.

Loads SmolLM2-135M-Instruct twice in one run: straight from the GGUF (dequantised on every load, as
transformers does) and from draftheads' converted safetensors cache, then compares their logits on
a chat prompt bit for bit and prints the load-time ratio.

    python bench/load_time.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from draftheads.models.backbone import DEMO_MODELS, BackboneConfig, _demo_gguf_path, load_backbone, resolve_location


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gguf = _demo_gguf_path(DEMO_MODELS["smollm2-135m"])
    resolve_location("demo:smollm2-135m")  # make sure the cache exists; its one-off cost is not the claim

    start = time.perf_counter()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_seconds = time.perf_counter() - start

    # Repeat: the first load in a process also pays one-off imports; report each.
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        cached = load_backbone(BackboneConfig(base="demo:smollm2-135m"))
        timings.append(time.perf_counter() - start)
    cached_seconds = statistics.median(timings)

    messages = [{"role": "user", "content": "Explain speculative decoding in one paragraph."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a = direct(ids).logits
        b = cached.model(ids).logits
    identical = torch.equal(a, b)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"load from GGUF (dequantise): {gguf_seconds:.2f} s (model + tokenizer)")
    print(f"load from draftheads cache:  median {cached_seconds:.2f} s of {', '.join(f'{t:.2f}' for t in timings)} (model + tokenizer)")
    print(f"ratio GGUF / cache: {gguf_seconds / cached_seconds:.1f}x")
    print(f"logits identical on a {ids.shape[1]}-token prompt: {identical} (max |diff| {(a - b).abs().max().item():.3g})")
    if not identical:
        raise SystemExit("the converted model does not reproduce the GGUF model's logits")


if __name__ == "__main__":
    argparse.ArgumentParser(description="Load time of the demo model: from its GGUF vs from the converted cache.").parse_args()
    main()
