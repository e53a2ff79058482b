"""Shared fixtures: the real demo tokenizer, tiny in-process Llama models, data files."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run in the interpreter when there is no GPU; it must be set before any kernel is
# first compiled, hence here, before the tests import anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's real tokenizer (SmolLM2, ChatML), loaded from the converted cache."""
    from draftheads.models.backbone import load_tokenizer

    return load_tokenizer("demo:smollm2-135m")


@pytest.fixture
def tiny_llama():
    """A freshly initialised tiny LlamaForCausalLM in eval mode (seeded)."""
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, demo_tokenizer):
    """A local base-model folder: a 2-layer Llama (hidden 64) with the demo tokenizer and vocabulary."""
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    folder = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer))).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def varied_base(tmp_path_factory, demo_tokenizer):
    """Like `tiny_base`, with larger initial weights: greedy and sampled continuations vary from
    prompt to prompt, and its lm_head is sharp enough for heads sharing it to learn quickly."""
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    folder = tmp_path_factory.mktemp("varied-base")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), init_std=0.3)).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder
