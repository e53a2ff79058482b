"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from helpers import tiny_llama_config


@pytest.fixture(scope="session")
def base8(tmp_path_factory, demo_tokenizer):
    """An 8-layer tiny base: EAGLE-3's default fused layers (1, 3, 4) are distinct there."""
    folder = tmp_path_factory.mktemp("base8")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), layers=8, init_std=0.3)).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder
