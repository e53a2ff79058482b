"""Every file a heads folder may hold, named once: what writes it and what reads it.

A heads folder is what training exports, `draftheads import` converts into, `draftheads eval` and
`draftheads calibrate` read and annotate, and `draftheads push` publishes. Code that writes or reads
one of these files takes its name from here, so a new file is added in one place and the publishing
list cannot miss it (`tests/models/test_heads_folder.py` checks every file the commands write).
"""

from __future__ import annotations

CONFIG_NAME = "config.json"
"""The heads' typed configuration (`HeadConfig`) with the base model's identity; written by training
and import, read by every loader."""
WEIGHTS_NAME = "model.safetensors"
"""The heads' weights (and a reduced draft vocabulary's map)."""
CARD_NAME = "README.md"
"""The model card, regenerated from the config, training.json and eval_report.json before a push."""
TRAINING_NAME = "training.json"
"""What training (or an import) did: steps, data, held-out evaluations."""
RECIPE_NAME = "recipe.yaml"
"""The resolved training recipe, every default filled in (read by the backbone-drift check)."""
CALIBRATION_NAME = "calibration.json"
"""The heads' joint rank statistics and answer walks, from training's held-out rows or `draftheads
calibrate`: what `--tree auto` sizes trees and predicts τ with."""
PREVIOUS_CALIBRATION_NAME = "calibration.previous.json"
"""The first calibration that `draftheads calibrate` replaced (training's, typically), kept."""
CALIBRATION_ANSWERS_NAME = "calibration-answers.partial.jsonl"
"""`draftheads calibrate`'s base-model answers, resumable (work, never published)."""
FALLBACK_ANSWERS_DIR = "fallback-answers"
"""The base model's answers to the packaged calibration set that `draftheads eval` predicts from when
the heads carry no calibration.json, one resumable file per setting (work, never published)."""
SUMMARY_NAME = "eval_report.json"
"""The summary of the last `draftheads eval` with `--write-card`, which the card shows."""
ADAPTER_DIR = "adapter"
"""Subfolder holding the peft LoRA adapter of a jointly trained backbone."""
BACKBONE_DIR = "backbone"
"""Subfolder holding a full trained (or merged) backbone with its tokenizer."""

PUBLISHED = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CARD_NAME,
    TRAINING_NAME,
    SUMMARY_NAME,
    CALIBRATION_NAME,
    RECIPE_NAME,
    f"{ADAPTER_DIR}/*",
    f"{BACKBONE_DIR}/*",
)
"""What `draftheads push` uploads (checkpoints, logs and work files never)."""
UNPUBLISHED = (PREVIOUS_CALIBRATION_NAME, CALIBRATION_ANSWERS_NAME, f"{FALLBACK_ANSWERS_DIR}/*")
"""Files a heads folder may hold that stay local."""
