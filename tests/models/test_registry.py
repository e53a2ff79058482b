from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from draftheads.models.heads.base import DraftHeads, HeadConfig
from draftheads.models.registry import HeadRegistry
from draftheads.utils.errors import ConfigError


@dataclass
class OtherConfig(HeadConfig):
    head_type: Literal["other"] = "other"
    """Family tag."""


def test_a_config_tag_that_differs_from_the_registered_name_is_refused():
    registry = HeadRegistry()

    class Mismatched(DraftHeads):
        config_class = OtherConfig

    with pytest.raises(ValueError, match="must have head_type = 'renamed'"):
        registry.register("renamed")(Mismatched)


def test_unknown_head_type_lists_the_known_ones():
    from draftheads.models.registry import HEADS

    with pytest.raises(ConfigError, match="heads.head_type: unknown head type 'nope'; known: clover, eagle, hydra, medusa"):
        HEADS.get("nope", "heads.head_type")


def test_new_heads_leave_the_callers_config_untouched(tiny_llama, demo_tokenizer):
    from draftheads.models.backbone import Backbone, ModelLocation
    from draftheads.models.draft_model import DraftModel
    from draftheads.models.heads.medusa import MedusaConfig

    config = MedusaConfig(num_heads=2)
    draft = DraftModel.new(Backbone(tiny_llama, demo_tokenizer, ModelLocation("tiny", "tiny", None, "x")), config)
    assert config.base is None and draft.heads.config.base.hidden_size == 64
