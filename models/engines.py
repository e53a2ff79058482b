"""The serving engines and reference codes an export targets, and where they disagree.

Each rule below was read from the engine's own loader at the version named (file and line in the
docstrings of `EngineRules`); `tests/models/test_engine_contracts.py` checks every export against
them. Where the engines agree an export serves them all (`--engine all`, the default); where they
disagree it names its target, and refuses what that target cannot load right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal


@dataclass(frozen=True)
class EngineDrafting:
    """The tree an engine drafts with the export README's serving command (what `draftheads eval
    --tree ENGINE` decodes with, to predict and measure τ before deploying)."""

    tree: Literal["eagle2", "chain", "choices", "cartesian"]
    """eagle2: EAGLE-2's reranked tree (`steps`, `topk`, `draft_tokens`); chain: one token per depth
    for `steps` depths; choices: the static tree the export writes (the heads' saved tree, else a
    chain of num_heads); cartesian: every combination of the top `topk` of depth 1 and the top
    `topk2` of depth 2 (medusa-llm 0.1's default `medusa_choices=[1, 7, 6]`)."""
    steps: int = 0
    """Depths drafted; 0: the heads' num_heads."""
    topk: int = 1
    """eagle2: nodes expanded per depth and children per expanded node; cartesian: depth-1 width."""
    draft_tokens: int = 0
    """eagle2: tokens verified per step, the root (the target's own token) included."""
    topk2: int = 0
    """cartesian: depth-2 width."""


@dataclass(frozen=True)
class EngineRules:
    """How one engine reads an exported draft."""

    name: str
    """`draftheads export --engine NAME`."""
    version: str
    """The version whose loader the rules were read from."""
    formats: tuple[str, ...]
    """Export layouts it loads."""
    eagle1_architectures: tuple[str, ...]
    """EAGLE-1 config `architectures` it resolves to an EAGLE-1 draft (vLLM renames X to EagleX and
    tries each entry, llama_eagle.py + registry.py; SGLang takes the first registered entry and
    never renames, models/registry.py; SafeAILab ignores the key)."""
    takes_first_registered: bool
    """Whether it builds the first registered class of `architectures` (SGLang, whose plain
    `LlamaForCausalLM` is registered too: its EAGLE-1 name must come first), rather than skipping
    names it does not know (vLLM)."""
    eagle1_fc_bias: str
    """What its EAGLE-1 `fc` does with a bias: `none` (vLLM: no bias, an `fc.bias` tensor is dropped
    silently, llama_eagle.py:110), `always` (SGLang: nn.Linear with bias, a missing `fc.bias` stays at
    its random init, llama_eagle.py:91), `config` (SafeAILab: config `bias`, default true, cnets1.py:524)."""
    config_bias_means: str
    """What a config `bias` key makes: `attention` (vLLM llama.py:267 and SGLang llama.py:339: q/k/v/o
    biases the checkpoint does not hold, left uninitialised) or `fc` (SafeAILab)."""
    d2t_with_full_vocab: bool
    """Whether an EAGLE-3 `d2t` may be present when the draft vocabulary is the whole vocabulary
    (vLLM 0.34 keeps no such parameter then and fails the load, llama_eagle3.py:338)."""
    medusa_files: tuple[str, ...]
    """Medusa weight files it reads, in order (FasterDecoding: `medusa_lm_head.pt` only)."""
    drafting: Mapping[str, EngineDrafting] = field(default_factory=lambda: MappingProxyType({}))
    """Per layout it loads, how it drafts with the export README's command: SGLang as the README
    launches it (steps = num_heads, topk 4, 8 draft tokens; server_args.py), vLLM's chain of
    `num_speculative_tokens` = num_heads (eagle.py proposes one token per step), SafeAILab's
    `EaModel.from_pretrained` defaults (total_token 60, depth 7, top_k 10: its depth counts the
    expansions after the first level, so 8 drafted depths, ea_model.py + cnets.py:topK_genrate),
    medusa-llm 0.1's `medusa_choices=[1, 7, 6]`, and TensorRT-LLM's `--medusa_choices` as written."""


ENGINES = MappingProxyType(
    {
        "vllm": EngineRules(
            "vllm",
            "vLLM 0.34.0",
            ("eagle",),
            ("LlamaForCausalLM",),
            False,
            "none",
            "attention",
            False,
            (),
            MappingProxyType({"eagle": EngineDrafting("chain")}),
        ),
        "sglang": EngineRules(
            "sglang",
            "SGLang 0.5.23",
            ("eagle",),
            ("LlamaForCausalLMEagle",),
            True,
            "always",
            "attention",
            True,
            (),
            MappingProxyType({"eagle": EngineDrafting("eagle2", topk=4, draft_tokens=8)}),
        ),
        "reference": EngineRules(
            "reference",
            "the reference codes (SafeAILab EAGLE cb7e084, FasterDecoding medusa-llm 0.1)",
            ("eagle", "medusa"),
            (),
            False,
            "config",
            "fc",
            True,
            ("medusa_lm_head.pt",),
            MappingProxyType(
                {
                    "eagle": EngineDrafting("eagle2", steps=8, topk=10, draft_tokens=60),
                    "medusa": EngineDrafting("cartesian", topk=7, topk2=6),
                }
            ),
        ),
        "trtllm": EngineRules(
            "trtllm",
            "TensorRT-LLM examples/medusa/convert_checkpoint.py",
            ("medusa",),
            (),
            False,
            "config",
            "fc",
            True,
            ("medusa_lm_head.pt", "medusa_lm_head.safetensors"),
            MappingProxyType({"medusa": EngineDrafting("choices")}),
        ),
    }
)
"""Every engine an export may target."""

ALL = "all"
"""The target that serves every engine loading the layout, where they agree."""


def targets(engine: str, layout: str) -> list[EngineRules]:
    """The engines an export of `layout` for `engine` (a name of ENGINES, or ALL) must satisfy."""
    if engine == ALL:
        return [rules for rules in ENGINES.values() if layout in rules.formats]
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine}: one of {ALL}, {', '.join(ENGINES)}")
    rules = ENGINES[engine]
    if layout not in rules.formats:
        served = [name for name, r in ENGINES.items() if layout in r.formats]
        raise ValueError(f"--engine {engine}: {rules.version} does not load the {layout} layout (it is served by {', '.join(served)})")
    return [rules]


def eagle1_architectures(rules: list[EngineRules]) -> list[str]:
    """An `architectures` list every engine in `rules` resolves to its EAGLE-1 class: the names of
    engines that build the first registered entry first, then the others'."""
    names = [name for r in sorted(rules, key=lambda r: not r.takes_first_registered) for name in r.eagle1_architectures]
    return list(dict.fromkeys(names)) or ["LlamaForCausalLM"]
