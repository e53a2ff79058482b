"""Checkpoint formats of other tools, each with its importer and exporter, so the CLI dispatches
by name without knowing any of them: `draftheads import FORMAT`, `draftheads export FORMAT`,
`draftheads push --format FORMAT`.

An exporter turns loaded heads into (config.json, tensors, weights file name) of its layout or
refuses with the reason; `export_heads` writes the folder atomically with a README that says how
to serve it, and, for heads trained with their backbone (Medusa-2), the merged backbone beside it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch
from safetensors.torch import save_file

from draftheads.models.backbone import DTYPES, write_weights_index
from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import ALL, targets
from draftheads.utils.atomic import atomic_directory
from draftheads.utils.errors import ModelLoadError
from draftheads.models.heads_folder import SUMMARY_NAME

BASE_DIR = "base_model"
"""Folder of an export holding the trained backbone (Medusa-2), which the engines need with the heads."""


@dataclass(frozen=True)
class Format:
    """A foreign checkpoint layout."""

    description: str
    importer: str
    """`module:function` converting such a checkpoint into our heads folder."""
    exporter: str
    """`module:function(draft, engines) -> (config, tensors, weights name, serving fields)`."""
    serve: Mapping[str, str]
    """Per engine (`models/engines.py`), how to serve an export (README text; {out}, {base},
    {heads}, {dtype} and the exporter's serving fields are filled in)."""

    def load(self, which: str):
        module, name = getattr(self, which).split(":")
        return getattr(importlib.import_module(module), name)


FORMATS = MappingProxyType(
    {
        "medusa": Format(
            "FasterDecoding Medusa-1 heads (Medusa's inference, TensorRT-LLM's Medusa conversion)",
            "draftheads.models.import_medusa:import_medusa",
            "draftheads.models.export_medusa:export_medusa",
            MappingProxyType(
                {
                    "reference": '- Medusa (PyPI `medusa-llm` 0.1): `MedusaModel.from_pretrained("{out}")`, base `{base}`. '
                    "FasterDecoding's GitHub code (e2a5d20) builds 5 heads whatever `medusa_num_heads` says and loads non-strictly: "
                    "with {heads} heads use the PyPI release.\n",
                    "trtllm": "- TensorRT-LLM: `python examples/medusa/convert_checkpoint.py --model_dir {base} --medusa_model_dir {out} "
                    "--num_medusa_heads {heads} --num_medusa_layers {layers} --dtype {dtype} --output_dir trt_ckpt` "
                    "(the head count must be given: its default is 4), "
                    "then `trtllm-build --checkpoint_dir trt_ckpt --output_dir trt_engine --speculative_decoding_mode medusa "
                    "--max_batch_size 4`, then `python examples/run.py --engine_dir trt_engine --tokenizer_dir {base} --temperature 1.0 "
                    '--medusa_choices="{choices}"` (the tree, at most {heads} deep).\n',
                }
            ),
        ),
        "eagle": Format(
            "SafeAILab EAGLE-1 / EAGLE-3 draft models (SGLang, vLLM, SafeAILab's EAGLE)",
            "draftheads.models.import_eagle:import_eagle",
            "draftheads.models.export_eagle:export_eagle",
            MappingProxyType(
                {
                    "sglang": "- SGLang: `python -m sglang.launch_server --model-path {base} --speculative-algorithm {algorithm} "
                    "--speculative-draft-model-path {out} --speculative-num-steps {heads} "
                    "--speculative-eagle-topk 4 --speculative-num-draft-tokens 8`.\n",
                    "vllm": "- vLLM: `vllm serve {base} "
                    '--speculative-config \'{{"method": "{method}", "model": "{out}", "num_speculative_tokens": {heads}}}\'` '
                    "(vLLM drafts a chain of {heads} tokens, no tree).\n",
                    "reference": "- SafeAILab EAGLE: "
                    '`EaModel.from_pretrained(base_model_path="{base}", ea_model_path="{out}", use_eagle3={eagle3})`; it reads '
                    "the base embedding through `model.safetensors.index.json`, which the base folder must have.\n",
                }
            ),
        ),
    }
)


def get_format(name: str) -> Format:
    """The format called `name`, or an error listing them."""
    if name not in FORMATS:
        raise ModelLoadError(f"unknown format '{name}'; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def export_heads(heads: str | Path, name: str, out: str | Path, dtype: str = "float32", base: str | None = None, engine: str = ALL) -> Path:
    """Write `heads` in format `name` for `engine` (`models/engines.py`; all: every engine that
    loads the layout) to `out` (replaced atomically), tensors in `dtype`."""
    fmt = get_format(name)
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    try:
        engines = targets(engine, name)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    draft = DraftModel.from_pretrained(heads, base, dtype="float32")  # exact weights; cast once at the end
    config, tensors, weights, serving = fmt.load("exporter")(draft, engines)
    target = DTYPES[dtype]
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous().cpu() for k, v in tensors.items()}
    config["torch_dtype"] = dtype
    trained = draft.backbone_mode != "frozen"
    out = Path(out).resolve()
    with atomic_directory(out, replace=True) as tmp:
        if trained:  # the engines need the backbone these heads were trained with
            draft.backbone.model.to(target).save_pretrained(tmp / BASE_DIR)
            draft.backbone.tokenizer.save_pretrained(tmp / BASE_DIR)
            write_weights_index(tmp / BASE_DIR)
            config["base_model_name_or_path"] = str(out / BASE_DIR)  # absolute: loaders resolve a relative one against the working folder
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if weights.endswith(".pt"):
            torch.save(tensors, tmp / weights)
        else:
            save_file(tensors, str(tmp / weights), metadata={"format": "pt"})
        (tmp / "README.md").write_text(_readme(fmt, name, draft, config, out, engines, {**serving, "dtype": dtype}))
    return out


def _readme(fmt: Format, name: str, draft: DraftModel, config: dict, out: Path, engines: list, serving: dict) -> str:
    heads = draft.heads.config
    trained = draft.backbone_mode != "frozen"
    fields = {
        "out": out,
        "base": config["base_model_name_or_path"],
        "heads": heads.num_heads,
        "eagle3": heads.head_type == "eagle" and heads.fused,
        **serving,
    }
    lines = [
        f"# {heads.head_type} draft heads in the {name} layout",
        "",
        f"{fmt.description}. Exported by `draftheads export {name}` from `{draft.folder}`; "
        f"base model `{heads.base.hub_id or heads.base.model}`"
        + (" as trained with the heads (merged into `base_model/`, which must be served instead of the original)" if trained else "")
        + ".",
        "",
        f"## Serving ({', '.join(r.version for r in engines)})",
        "",
        *(fmt.serve[r.name].format(**fields) for r in engines),
    ]
    report = draft.folder / SUMMARY_NAME if draft.folder is not None else None
    if report is not None and report.is_file():
        summary = json.loads(report.read_text())
        measured = f"τ {summary.get('tau')}, {summary.get('speedup_vs_hf_generate')}x HF generate"
        lines += [
            "## Measured by draftheads eval",
            "",
            f"{measured} ({summary.get('dtype')}, {summary.get('n_prompts')} prompts of {summary.get('prompts')}).",
            "",
        ]
    return "\n".join(lines)
