"""Fixtures of the per-family head tests."""

from __future__ import annotations

import pytest

from draftheads.models.backbone import Backbone, ModelLocation


@pytest.fixture
def backbone(tiny_llama):
    """The tiny Llama as a Backbone (no tokenizer: these tests feed token ids)."""
    return Backbone(tiny_llama, None, ModelLocation("tiny", "tiny", None, "in-process"))
