"""Exports against each engine's own loader contract, read from its source at a named version.

Each `*_problems` function states what that loader does with an export folder (file names, tensor
names and shapes, config keys and how it interprets them), and returns every way the export would
fail to load or, worse, load and draft wrong without a word. The rules and where they were read:

- vLLM 0.34.0: model_executor/models/llama_eagle3.py (d2t only when the draft vocabulary is reduced,
  :338; no missing-weight check, :444), llama_eagle.py (fc without bias, :110; `.bias` tensors
  dropped, models/utils.py:469), llama.py:267 (`attention_bias or bias` makes q/k/v/o biases),
  transformers_utils/configs/eagle.py:46 (X renamed EagleX) and registry.py (each entry tried).
- SGLang 0.5.23: models/registry.py (the first registered architecture; `LlamaForCausalLM` is the
  plain Llama), models/llama_eagle.py:91 (fc always with bias), llama_eagle3.py:163 (fc bias from
  config `bias`), :350 (d2t optional), models/llama.py:339 (`attention_bias or bias`).
- SafeAILab EAGLE cb7e084: ea_model.py (model.safetensors read; config `bias` = fc bias, default
  true, :51; d2t/t2d dropped when the vocabularies are equal, :74; strict=False), cnets.py:487
  (`draft_vocab_size` required), cnets.py:489 (the base embedding through an index file).
- FasterDecoding medusa-llm 0.1: medusa/model/medusa_model.py:133 (`medusa_lm_head.pt` only, torch.load,
  strict=False; `medusa_num_heads` from the config, `base_model_name_or_path` as given).
- TensorRT-LLM examples/medusa/convert_checkpoint.py and models/medusa/weight.py (`.pt` then
  `.safetensors`; `{h}.{l}.linear.weight|bias` and `{h}.{L}.weight` read with KeyError;
  `--num_medusa_heads` defaults to 4 and wins over the config).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from draftheads.models.backbone import BackboneConfig, load_backbone, write_weights_index
from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import targets
from draftheads.models.formats import export_heads
from draftheads.models.heads.eagle import EagleConfig
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.models.import_eagle import default_fuse_layers
from draftheads.utils.errors import ModelLoadError
from helpers import spread_vocabulary

LAYER = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "post_attention_layernorm"
)


def read_export(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((folder / "config.json").read_text())
    if (folder / "model.safetensors").is_file():
        return config, load_file(str(folder / "model.safetensors"))
    return config, {}


def attention_bias_problems(engine: str, config: dict, tensors: dict, prefix: str) -> list[str]:
    if not (config.get("attention_bias") or config.get("bias")):
        return []
    missing = [f"{prefix}{p}.bias" for p in LAYER[:4] if f"{prefix}{p}.bias" not in tensors]
    return (
        [f"{engine}: config bias/attention_bias makes q/k/v/o biases the file lacks ({missing[0]}...): left uninitialised, silently"]
        if missing
        else []
    )


def vllm_problems(folder: Path) -> list[str]:
    """vLLM 0.34.0's EAGLE / EAGLE-3 loaders."""
    config, tensors = read_export(folder)
    problems = []
    if "LlamaForCausalLMEagle3" in config["architectures"]:
        full = config.get("draft_vocab_size", config["vocab_size"]) == config["vocab_size"]
        if full and "d2t" in tensors:
            problems.append("vllm: ValueError: There is no module or parameter named 'draft_id_to_target_id'")
        if not full and "d2t" not in tensors:
            problems.append("vllm: draft_id_to_target_id left uninitialised, silently")
        need = ["fc.weight", "norm.weight", "lm_head.weight"] + [f"midlayer.{p}.weight" for p in (*LAYER, "input_layernorm", "hidden_norm")]
        problems += [f"vllm: {name} missing: left uninitialised, silently" for name in need if name not in tensors]
        return problems + attention_bias_problems("vllm", config, tensors, "midlayer.")
    if not any(f"Eagle{a}" == "EagleLlamaForCausalLM" for a in config["architectures"]):
        problems.append(f"vllm: architectures {config['architectures']} resolve to no EAGLE-1 class (EagleLlamaForCausalLM)")
    if "fc.bias" in tensors and bool(tensors["fc.bias"].any()):
        problems.append("vllm: fc has no bias; the file's non-zero fc.bias is dropped, silently")
    need = ["fc.weight"] + [f"layers.0.{p}.weight" for p in LAYER]
    problems += [f"vllm: {name} missing: left uninitialised, silently" for name in need if name not in tensors]
    return problems + attention_bias_problems("vllm", config, tensors, "layers.0.")


def sglang_problems(folder: Path) -> list[str]:
    """SGLang 0.5.23's model registry and EAGLE / EAGLE-3 loaders."""
    config, tensors = read_export(folder)
    registered = ("LlamaForCausalLM", "LlamaForCausalLMEagle", "LlamaForCausalLMEagle3")
    chosen = next((a for a in config["architectures"] if a in registered), None)
    if chosen not in ("LlamaForCausalLMEagle", "LlamaForCausalLMEagle3"):
        return [
            f"sglang: architectures {config['architectures']} build {chosen or 'nothing'}, "
            "not an EAGLE draft (its tensors are skipped with warnings)"
        ]
    if chosen == "LlamaForCausalLMEagle3":
        problems = ["sglang: tie_word_embeddings makes the draft's lm_head its embedding"] if config.get("tie_word_embeddings") else []
        if config.get("bias") and "fc.bias" not in tensors:
            problems.append("sglang: config bias makes an fc bias the file lacks: random, silently")
        need = ["fc.weight", "norm.weight", "lm_head.weight"] + [f"midlayer.{p}.weight" for p in (*LAYER, "input_layernorm", "hidden_norm")]
        return problems + [f"sglang: {name} missing: left at its init, silently" for name in need if name not in tensors]
    problems = [] if "fc.bias" in tensors else ["sglang: its EAGLE-1 fc always has a bias; the file has none: random, silently"]
    need = ["fc.weight"] + [f"layers.0.{p}.weight" for p in LAYER]
    problems += [f"sglang: {name} missing: left at its init, silently" for name in need if name not in tensors]
    return problems + attention_bias_problems("sglang", config, tensors, "layers.0.")


def safeailab_problems(folder: Path) -> list[str]:
    """SafeAILab EAGLE's EaModel.from_pretrained (cb7e084)."""
    config, tensors = read_export(folder)
    if not tensors:
        return ["safeailab: neither pytorch_model.bin nor model.safetensors"]
    if "LlamaForCausalLMEagle3" in config["architectures"]:
        if "draft_vocab_size" not in config:
            return ["safeailab: EConfig has no draft_vocab_size default: the draft model cannot be built"]
        if config["draft_vocab_size"] != config["vocab_size"] and not {"d2t", "t2d"} <= set(tensors):
            return ["safeailab: a reduced vocabulary without d2t/t2d: its buffers stay at zeros, silently"]
        return []
    if config.get("bias", True) and "fc.bias" not in tensors:
        return ["safeailab: config bias (default true) makes an fc bias the file lacks: random, silently (strict=False)"]
    return []


def medusa_problems(folder: Path) -> list[str]:
    """FasterDecoding's MedusaModel.from_pretrained (PyPI medusa-llm 0.1)."""
    config = json.loads((folder / "config.json").read_text())
    if not (folder / "medusa_lm_head.pt").is_file():
        return ["medusa: medusa_lm_head.pt missing: hf_hub_download of a local folder fails"]
    state = torch.load(folder / "medusa_lm_head.pt", weights_only=True)
    heads, layers = config["medusa_num_heads"], config.get("medusa_num_layers", 1)
    need = [f"{h}.{j}.linear.{p}" for h in range(heads) for j in range(layers) for p in ("weight", "bias")] + [
        f"{h}.{layers}.weight" for h in range(heads)
    ]
    problems = [f"medusa: {name} missing: random, silently (strict=False)" for name in need if name not in state]
    base = config["base_model_name_or_path"]
    if not Path(base).is_absolute() and (folder / base).exists():
        problems.append(f"medusa: base_model_name_or_path {base!r} resolves against the working folder, not the export")
    return problems


def trtllm_problems(folder: Path) -> list[str]:
    """TensorRT-LLM's Medusa conversion, with the export README's own commands."""
    readme = (folder / "README.md").read_text()
    line = next((line for line in readme.splitlines() if line.startswith("- TensorRT-LLM")), "")
    problems = [] if line else ["trtllm: the README has no conversion command"]
    heads = re.search(r"--num_medusa_heads (\d+)", line)
    for flag in (
        "--model_dir", "--medusa_model_dir", "--num_medusa_heads", "--num_medusa_layers", "--output_dir", "trtllm-build --checkpoint_dir",
        "--speculative_decoding_mode medusa", "--medusa_choices"
    ):
        if flag not in line:
            problems.append(f"trtllm: the README's commands lack {flag}")
    weights = folder / "medusa_lm_head.pt"
    state = torch.load(weights, weights_only=True) if weights.is_file() else load_file(str(folder / "medusa_lm_head.safetensors"))
    layers = json.loads((folder / "config.json").read_text()).get("medusa_num_layers", 1)
    count = int(heads.group(1)) if heads else 4
    for h in range(count):
        for name in [f"{h}.{k}.linear.{p}" for k in range(layers) for p in ("weight", "bias")] + [f"{h}.{layers}.weight"]:
            if name not in state:
                problems.append(f"trtllm: KeyError {name!r}")
    return problems


def serving_line_problems(folder: Path) -> list[str]:
    """Every serving command of the export README complete: vLLM's JSON, SGLang's flags."""
    readme = (folder / "README.md").read_text()
    problems = []
    for command in re.findall(r"`(vllm serve [^`]+)`", readme):
        spec = json.loads(shlex.split(command)[shlex.split(command).index("--speculative-config") + 1])
        if set(spec) != {"method", "model", "num_speculative_tokens"} or not Path(spec["model"]).is_absolute():
            problems.append(f"vllm command: {spec}")
    for command in re.findall(r"`(python -m sglang.launch_server [^`]+)`", readme):
        for flag in ("--model-path", "--speculative-algorithm", "--speculative-draft-model-path", "--speculative-num-steps"):
            if flag not in command:
                problems.append(f"sglang command lacks {flag}")
    return problems


CHECKS = {("eagle", "vllm"): vllm_problems, ("eagle", "sglang"): sglang_problems, ("eagle", "reference"): safeailab_problems,
          ("medusa", "reference"): medusa_problems, ("medusa", "trtllm"): trtllm_problems}
"""The contract of each (layout, engine) pair an export can target."""


def heads_of(base: Path, config, folder: Path, fc_bias_zero: bool = False) -> Path:
    draft = DraftModel.new(load_backbone(BackboneConfig(base=str(base))), config)
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in draft.heads.named_parameters():
            p.normal_(std=0.1) if "norm" not in name else p.uniform_(0.5, 1.5)
            if fc_bias_zero and name.endswith("fc.bias"):
                p.zero_()
    spread_vocabulary(draft.heads, draft.backbone.lm_head)
    return draft.save_pretrained(folder)


EXPORTS = {
    "eagle3-full": ("eagle", lambda: EagleConfig(num_heads=2, fuse_layers=default_fuse_layers(8), training_time_test=True), "all", False),
    "eagle3-reduced": (
        "eagle",
        lambda: EagleConfig(num_heads=2, fuse_layers=default_fuse_layers(8), training_time_test=True, draft_vocab_size=300),
        "all",
        False,
    ),
    "eagle1-zero-fc-bias": ("eagle", lambda: EagleConfig(num_heads=2), "all", True),
    "eagle1-fc-bias-sglang": ("eagle", lambda: EagleConfig(num_heads=2), "sglang", False),
    "eagle1-fc-bias-reference": ("eagle", lambda: EagleConfig(num_heads=2), "reference", False),
    "eagle1-no-fc-bias": ("eagle", lambda: EagleConfig(num_heads=2, fc_bias=False), "all", False),
    "medusa-own-projections": ("medusa", lambda: MedusaConfig(num_heads=3, share_lm_head=False), "all", False),
    "medusa-shared-projection": ("medusa", lambda: MedusaConfig(num_heads=2), "all", False),
}


@pytest.fixture(scope="module")
def exports(base8, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for name, (layout, config, engine, zero) in EXPORTS.items():
        heads = heads_of(base8, config(), root / f"{name}-heads", zero)
        made[name] = (export_heads(heads, layout, root / name, engine=engine), engine)
    return made


@pytest.mark.parametrize("name", list(EXPORTS))
def test_every_export_loads_right_in_every_engine_it_targets(exports, name):
    folder, engine = exports[name]
    layout = EXPORTS[name][0]
    checks = [CHECKS[layout, rules.name] for rules in targets(engine, layout)]
    assert checks and [p for check in checks for p in check(folder)] + serving_line_problems(folder) == []


def test_the_contracts_catch_each_broken_export_of_before(exports, tmp_path):
    """Each table row of issue 31, rebuilt from today's export as it was written before the fix:
    the contract of the engine concerned flags it."""
    import shutil

    def variant(name: str, edit) -> Path:
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(exports[name][0], folder)
        edit(folder)
        return folder

    def tensors(folder: Path, change) -> None:
        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"))

    def config(folder: Path, change) -> None:
        data = json.loads((folder / "config.json").read_text())
        change(data)
        (folder / "config.json").write_text(json.dumps(data))

    vocab = json.loads((exports["eagle3-full"][0] / "config.json").read_text())["vocab_size"]
    old_eagle3 = variant("eagle3-full", lambda f: tensors(f, lambda s: s.update(d2t=torch.zeros(vocab, dtype=torch.long))))
    assert "There is no module or parameter named 'draft_id_to_target_id'" in " ".join(vllm_problems(old_eagle3))
    old_eagle1 = variant("eagle1-fc-bias-sglang", lambda f: config(f, lambda c: c.update(architectures=["LlamaForCausalLM"], bias=True)))
    assert any("attention_bias" in p for p in vllm_problems(old_eagle1)) and any(
        "dropped, silently" in p for p in vllm_problems(old_eagle1)
    )
    assert "build LlamaForCausalLM, not an EAGLE draft" in " ".join(sglang_problems(old_eagle1))
    no_bias = variant("eagle1-no-fc-bias", lambda f: tensors(f, lambda s: s.pop("fc.bias")))
    assert "always has a bias" in " ".join(sglang_problems(no_bias)) and "fc bias the file lacks" in " ".join(safeailab_problems(no_bias))

    def as_safetensors(folder: Path) -> None:
        save_file(torch.load(folder / "medusa_lm_head.pt", weights_only=True), str(folder / "medusa_lm_head.safetensors"))
        (folder / "medusa_lm_head.pt").unlink()

    old_medusa = variant("medusa-own-projections", as_safetensors)
    assert "medusa_lm_head.pt missing" in " ".join(medusa_problems(old_medusa))

    def relative_base(folder: Path) -> None:
        (folder / "base_model").mkdir()
        config(folder, lambda c: c.update(base_model_name_or_path="base_model"))

    assert "resolves against the working folder" in " ".join(medusa_problems(variant("medusa-own-projections", relative_base)))

    def old_readme(folder: Path) -> None:
        text = (folder / "README.md").read_text()
        (folder / "README.md").write_text(re.sub(r" --num_medusa_layers \d+.*", " --output_dir trt_ckpt`, then `trtllm-build`.", text))

    old_trt = variant("medusa-own-projections", old_readme)
    assert any("--speculative_decoding_mode medusa" in p for p in trtllm_problems(old_trt))


def test_a_trained_backbone_export_names_its_base_by_absolute_path_with_an_index(base8, tmp_path):
    """Medusa-2: the merged backbone beside the heads; loaders resolve a relative base path against
    their working folder, and SafeAILab's read the embedding through an index file."""
    from draftheads.models.heads_folder import BACKBONE_DIR

    folder = heads_of(base8, MedusaConfig(num_heads=2), tmp_path / "heads")
    backbone = load_backbone(BackboneConfig(base=str(base8)))
    backbone.model.save_pretrained(folder / BACKBONE_DIR)  # as training a full backbone leaves it
    backbone.tokenizer.save_pretrained(folder / BACKBONE_DIR)
    out = export_heads(folder, "medusa", tmp_path / "x")
    base = json.loads((out / "config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base) == out / "base_model"
    index = json.loads((out / "base_model" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.embed_tokens.weight"] == "model.safetensors"


def test_a_single_file_base_gets_the_index_safeailab_reads(base8, tmp_path):
    import shutil

    folder = tmp_path / "base"
    shutil.copytree(base8, folder)
    write_weights_index(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    header = load_file(str(folder / "model.safetensors"))
    assert set(index["weight_map"]) == set(header) and index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in header.values()
    )


def test_targets_that_cannot_load_a_layout_or_a_bias_are_refused_with_the_reason(exports, base8, tmp_path):
    heads = heads_of(base8, EagleConfig(num_heads=2), tmp_path / "e1")
    for engine in ("all", "vllm"):
        with pytest.raises(ModelLoadError, match=r"vLLM 0.34.0: its EAGLE-1 fc has no bias and drops an fc.bias silently"):
            export_heads(heads, "eagle", tmp_path / "x", engine=engine)
    with pytest.raises(ModelLoadError, match="--engine trtllm: .* does not load the eagle layout"):
        export_heads(heads, "eagle", tmp_path / "x", engine="trtllm")
    with pytest.raises(ModelLoadError, match="--engine nope: one of all, vllm, sglang, reference, trtllm"):
        export_heads(heads, "eagle", tmp_path / "x", engine="nope")
    assert not (tmp_path / "x").exists()
