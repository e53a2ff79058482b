"""One home for the files of a heads folder: every name there is published or kept local, never
both; what training and `draftheads calibrate` write is named there (their tests call
`helpers.assert_named` on the folders they make)."""

from __future__ import annotations

from helpers import named_in_heads_folder

from draftheads.models import heads_folder


def test_every_name_is_published_or_kept_local_exactly_once():
    constants = {k: v for k, v in vars(heads_folder).items() if k.endswith(("_NAME", "_DIR"))}
    patterns = [*heads_folder.PUBLISHED, *heads_folder.UNPUBLISHED]
    assert len(patterns) == len(set(patterns)) == len(constants)
    for key, name in constants.items():
        assert name in patterns or f"{name}/*" in patterns, key
    assert named_in_heads_folder("backbone/model.safetensors") and not named_in_heads_folder("checkpoints/step-10/model.safetensors")
