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


# Head-family options that change the architecture or the training forward, each a row of the
# shared tests beside every registered family's defaults (fuse_layers fit the 2-layer tiny Llama).
HEAD_VARIANTS = {
    "eagle": {
        "eagle3": {"fuse_layers": [0, 1], "training_time_test": True},
        "eagle3-vocab40": {"fuse_layers": [0, 1], "training_time_test": True, "draft_vocab_size": 40},
        "eagle1-vocab40": {"draft_vocab_size": 40},
    },
    "hydra": {"hydra++": {"prefix_attention": True, "head_layers": 2}, "vocab40": {"draft_vocab_size": 40}},
    "clover": {"no-block": {"augmenting_block": False}, "vocab40": {"draft_vocab_size": 40}},
    "medusa": {"vocab40": {"draft_vocab_size": 40}, "unshared-vocab40": {"draft_vocab_size": 40, "share_lm_head": False}},
}
"""Rows with `draft_vocab_size` draft over a reduced vocabulary (tiny models have 128 tokens)."""


def spread_vocabulary(heads, lm_head, seed: int = 5):
    """Give reduced-vocabulary heads a scattered map (not the placeholder 0..N-1), as training does."""
    import torch

    if heads.draft_to_token is not None:
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randperm(heads.vocab_size, generator=generator)[: heads.draft_to_token.numel()].sort().values
        heads.use_draft_vocab(tokens, lm_head)
    return heads


def head_cases():
    """pytest parameters (family, options): every registered family, then each variant above."""
    import pytest

    from draftheads.models.registry import HEADS

    return [pytest.param(name, {}, id=name) for name in HEADS.names()] + [
        pytest.param(name, options, id=f"{name}-{label}") for name, rows in HEAD_VARIANTS.items() for label, options in rows.items()
    ]


def trained_looking(heads):
    """`heads` in eval mode with random weights (norms at 1), not the identity they start as."""
    import torch

    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in heads.named_parameters():
            p.normal_(std=0.1) if "norm" not in name else p.fill_(1.0)
    return heads.eval()


def write_jsonl(path: Path, records: list) -> Path:
    """Write records as JSON lines (strings are written verbatim, to make malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def overrides(base, out, **extra) -> list[str]:
    """`key=value` overrides of a small training run on a tiny base (demo ShareGPT, 8 steps)."""
    values = {
        "model.base": str(base),
        "data.sources": "[{path: demo:sharegpt, limit: 60}]",
        "data.max_length": 64,
        "data.skip_invalid": "true",
        "data.eval_fraction": 0.1,
        "heads.head_type": "medusa",
        "heads.num_heads": 2,
        "train.output_dir": str(out),
        "train.max_steps": 8,
        "train.batch_size": 2,
        "train.lr": 0.01,
        "train.warmup_steps": 2,
        "train.eval_every": 100,
        "train.save_every": 100,
        "train.trackers": "[]",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def launch(config: str, base, out, **extra) -> None:
    """`draftheads train` with `overrides` under an accelerate config (a subprocess); asserts success."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "draftheads.scripts.cli", "train", "--accelerate-config", config, *overrides(base, out, **extra)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


# Every character that some reader has treated as a line break, every control character, and
# astral characters (no lone surrogates: UTF-8 cannot hold them). JSON escapes the ASCII controls;
# U+0085, U+2028, U+2029 and U+007F-U+009F are written raw when ensure_ascii=False.
LINE_BREAKS = "\n\r\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
AWKWARD_TEXT = "a" + LINE_BREAKS + "".join(map(chr, range(0x20))) + "".join(map(chr, range(0x7F, 0xA0))) + "😀𝄞𠀀\U0010fffd" + "z"


def write_awkward_jsonl(path: Path, records: list[dict]) -> Path:
    """Records as a hand-edited file holds them: characters raw (ensure_ascii=False), "\\r\\n" line
    endings, and no newline after the last line."""
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode("utf-8"))
    return path


def chi_square_p_value(counts, probs, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells expected below `min_expected` are pooled."""
    import torch

    counts, probs = counts.double().flatten(), probs.double().flatten()
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    statistic = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(statistic / 2.0)))


def random_medusa_heads(base, folder: Path) -> Path:
    """Three Medusa heads with random weights on `base`, saved into folder/medusa (a heads folder)."""
    import torch

    from draftheads.models.backbone import BackboneConfig, load_backbone
    from draftheads.models.draft_model import DraftModel
    from draftheads.models.heads.medusa import MedusaConfig

    backbone = load_backbone(BackboneConfig(base=str(base)), "cpu")
    torch.manual_seed(0)
    draft = DraftModel.new(backbone, MedusaConfig(num_heads=3))
    for parameter in draft.heads.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return draft.save_pretrained(folder / "medusa")


FIXED_BASELINES = [
    "baselines.prompt_lookup_tokens=10",
    "baselines.prompt_lookup_ngram=2",
    "baselines.lookup_tokens=8",
    "baselines.lookup_ngram=2",
    "repeats=1",
]
"""`draftheads eval` overrides for tests that are not about the baselines' sweep or the repeats:
fixed lookup settings (no sweep at start-up) and one repeat."""


def fixed_baselines():
    """`EvalConfig` fields of FIXED_BASELINES."""
    from draftheads.eval.config import BaselineSettings

    return {"baselines": BaselineSettings(10, 2, 8, 2), "repeats": 1}


def named_in_heads_folder(path: str) -> bool:
    """Whether a path inside a heads folder is one models/heads_folder.py names."""
    import fnmatch

    from draftheads.models import heads_folder

    return any(fnmatch.fnmatch(path, pattern) for pattern in (*heads_folder.PUBLISHED, *heads_folder.UNPUBLISHED))


def assert_named(folder: Path) -> None:
    """Every file in the heads `folder` is one models/heads_folder.py names."""
    stray = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not named_in_heads_folder(str(p.relative_to(folder)))]
    assert not stray, f"files no name in models/heads_folder.py covers: {stray}"
