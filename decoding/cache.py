"""The engine's own KV cache, and the attention function that lets transformers use it.

The cache is preallocated per layer ([B, Hkv, capacity, D], created lazily from the first keys a
layer writes, so any model's head layout and dtype just work). A forward over T new tokens (tree
nodes, a prompt, or one autoregressive token) writes their keys/values at [length, length + T)
and attends over [0, length + T); after acceptance `commit` compacts the accepted nodes into
place and advances `length`. Rejected nodes are simply overwritten by the next forward.

Transformers reaches this cache through its `AttentionInterface`: `install_tree_attention`
registers `tree_attention_forward` under `ATTENTION_NAME` and switches the model to it. The engine
passes the cache as the `draftheads_cache` keyword of the model's forward (transformers hands such
keywords to the attention function) and the tree's [1, 1, T, T] ancestor mask as the ordinary
`attention_mask` (transformers passes a 4-D mask through untouched). Without `draftheads_cache`
the function is plain SDPA, so training and HF `generate` on the same model are unaffected.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from draftheads.kernels.kv_compact import kv_compact
from draftheads.kernels.dispatch import resolve_backend
from draftheads.kernels.tree_attention import tree_attention

ATTENTION_NAME = "draftheads_tree"


class KVCache:
    """Preallocated keys/values of every layer in one buffer, plus the committed length.

    One buffer ([layers, 2, B, Hkv, capacity, D]) lets compaction move every layer's keys and
    values in a single kernel launch. It is allocated at the first write, from that layer's key
    shape and dtype."""

    def __init__(self, capacity: int, num_layers: int, backend: str = "auto"):
        self.capacity = capacity
        self.num_layers = num_layers
        self.backend = backend
        """Kernel backend for tree attention and compaction (see `draftheads.kernels.dispatch`)."""
        self.length = 0
        self.pending = 0
        self.buffer: torch.Tensor | None = None
        self._bits: tuple[torch.Tensor, torch.Tensor] | None = None

    def tree_bits(self, tree_mask: torch.Tensor) -> torch.Tensor | None:
        """The packed ancestor bits of this forward's tree mask for the Triton kernel, computed once
        per forward (every layer gets the same mask object); None on the reference path."""
        if resolve_backend(self.backend, tree_mask.device) == "reference":
            return None
        if self._bits is None or self._bits[0] is not tree_mask:
            from draftheads.kernels.tree_attention_triton import ancestor_bits

            self._bits = (tree_mask, ancestor_bits(tree_mask.reshape(tree_mask.shape[-2:])))
        return self._bits[1]

    def reset(self, capacity: int | None = None) -> None:
        """Forget the sequence; keep the buffer unless a larger capacity is asked for."""
        if capacity is not None and capacity > self.capacity:
            self.capacity = capacity
            self.buffer = None
        self.length = 0
        self.pending = 0

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of `layer`'s whole key and value buffers, [B, Hkv, capacity, D]."""
        if self.buffer is None:
            raise RuntimeError("the KV cache has not been written yet")
        return self.buffer[layer, 0], self.buffer[layer, 1]

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new keys/values [B, Hkv, T, D] after the committed prefix of `layer`; return
        views of the prefix plus the new entries."""
        count = key.shape[2]
        end = self.length + count
        if end > self.capacity:
            raise RuntimeError(
                f"KV cache overflow: {self.length} committed + {count} new > capacity {self.capacity}"
            )
        if self.buffer is None:
            self.buffer = key.new_empty((self.num_layers, 2, key.shape[0], key.shape[1], self.capacity, key.shape[3]))
        keys, values = self.buffer[layer, 0], self.buffer[layer, 1]
        if keys.shape[:2] != key.shape[:2] or keys.shape[3] != key.shape[3] or value.shape != key.shape:
            raise RuntimeError(
                f"layer {layer}: keys {tuple(key.shape)} / values {tuple(value.shape)} do not fit the cache "
                f"{tuple(keys.shape)}; layers with different head layouts are not supported"
            )
        keys[:, :, self.length : end] = key
        values[:, :, self.length : end] = value
        self.pending = count
        return keys[:, :, :end], values[:, :, :end]

    def commit(self, nodes: list[int]) -> None:
        """Keep the pending entries `nodes` (increasing offsets into the last forward's tokens),
        moved to follow the prefix in that order, and drop the rest."""
        if any(not 0 <= n < self.pending for n in nodes):
            raise ValueError(f"commit of {nodes}: only {self.pending} entries are pending")
        if nodes != list(range(len(nodes))):  # already in place when the path is a prefix
            kv_compact(self.buffer, self.length, torch.tensor(nodes, dtype=torch.long), self.backend)
        self.length += len(nodes)
        self.pending = 0


def tree_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Transformers attention function: tree attention over the engine's cache when the forward
    got `draftheads_cache`, plain SDPA otherwise. Returns ([B, T, H, D], None) like SDPA."""
    cache = kwargs.pop("draftheads_cache", None)
    causal = kwargs.pop("draftheads_causal", False)
    if cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if causal:  # a prompt on an empty cache: SDPA's own causal path, no mask tensor at all
        if cache.length:
            raise ValueError("a causal forward needs an empty cache (prompts start a sequence)")
        keys, values = cache.append(module.layer_idx, key, value)
        return sdpa_attention_forward(module, query, keys, values, None, dropout=0.0, scaling=scaling, is_causal=query.shape[2] > 1)
    if attention_mask is None or attention_mask.dim() != 4:
        raise ValueError("a forward with draftheads_cache needs the tree's [1, 1, T, T] bool mask as attention_mask")
    keys, values = cache.append(module.layer_idx, key, value)
    tree_mask = attention_mask.reshape(attention_mask.shape[-2:])
    output = tree_attention(query, keys, values, tree_mask, cache.tree_bits(attention_mask), scaling, cache.backend)
    return output.transpose(1, 2), None


PROBE_NAME = "draftheads_probe"
IGNORED_KEYWORDS = frozenset({"dropout", "scaling", "position_ids", "use_cache", "cache_position", "output_attentions", "is_causal"})
"""Keywords the attention of supported models receives that do not change what it computes here
(dropout is 0 in eval mode; scaling is applied; positions are already in the rotated q/k)."""


def unsupported_attention(model: nn.Module) -> list[str]:
    """What the model's attention layers are asked to do that the engine's tree attention does not
    implement, found by one forward of 3 tokens through a probe that records the keywords each
    layer passes (so no modeling code is read or guessed): sliding windows shorter than the
    model's context, logit softcapping, attention sinks, or keywords we do not know."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    seen: dict[str, object] = {}
    calls: list[int] = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        # only calls that received the forward's keyword count: the engine hands its cache over that way
        if kwargs.pop("draftheads_probe", None):
            calls.append(getattr(module, "layer_idx", -1))
        for name, value_ in kwargs.items():
            if value_ is not None:
                seen.setdefault(name, value_)
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    AttentionInterface.register(PROBE_NAME, probe)
    AttentionMaskInterface.register(PROBE_NAME, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(PROBE_NAME)
    try:
        with torch.no_grad():
            ids = torch.zeros(1, 3, dtype=torch.long, device=next(model.parameters()).device)
            model(input_ids=ids, use_cache=False, draftheads_probe=True)
    except TypeError as exc:  # a forward that takes no extra keywords cannot receive the engine's cache
        return [f"a forward that passes no keywords on to its attention ({exc})"]
    finally:
        model.set_attn_implementation(previous)
    text = model.config.get_text_config()
    context = getattr(text, "max_position_embeddings", None) or 1 << 30
    problems = []
    if sorted(calls) != list(range(text.num_hidden_layers)):
        # the engine's cache is filled by the attention function, once per layer, keyed by layer_idx
        problems.append(
            "attention that does not receive the forward's keywords once per layer through transformers' attention interface "
            f"(layers that did: {sorted(calls)})"
        )
    window = seen.pop("sliding_window", None)
    if window is not None and int(window) < context:
        problems.append(f"a sliding attention window of {window} tokens")
    if seen.pop("softcap", None) is not None:
        problems.append("attention logit softcapping")
    if seen.pop("s_aux", None) is not None:
        problems.append("attention sinks")
    unknown = sorted(set(seen) - IGNORED_KEYWORDS)
    if unknown:
        problems.append("attention keywords it does not know: " + ", ".join(unknown))
    return problems


def install_tree_attention(model: nn.Module) -> None:
    """Register the tree attention (and SDPA's mask builder under the same name, so callers that
    do not pass a 4-D mask get SDPA's) and switch `model` to it. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, tree_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
