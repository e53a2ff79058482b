"""Run FasterDecoding's Medusa (PyPI medusa-llm 0.1) on an exported draft: greedy answers and steps
per prompt, as JSON on stdout. Runs in the reference virtualenv that bench/reference_codes.py builds
(transformers 4.x), never in draftheads' own.

    python medusa_driver.py --base DIR --draft DIR --prompts FILE.json --max-new-tokens N --choices JSON
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from medusa.model import medusa_model, modeling_llama_kv
from medusa.model.kv_cache import KVCache
from patches import rope_base



def grouped_query_cache(model):
    """medusa-llm 0.1's `initialize_past_key_values` with one slot per key/value head: its own
    allocates one per query head, which bases with grouped-query attention (the demo's 3 key/value
    heads for 9 query heads) cannot fill. Nothing else of the reference changes."""
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    data = torch.zeros(
        config.num_hidden_layers * 2, 1, kv_heads, config.max_position_embeddings, head_dim, device=model.device, dtype=model.dtype
    )
    lengths = torch.zeros(config.num_hidden_layers * 2, dtype=torch.long, device="cpu")
    caches = [[KVCache(data[i * 2 + j], lengths[i * 2 + j]) for j in range(2)] for i in range(config.num_hidden_layers)]
    return caches, data, lengths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--base", required=True, help="the base model folder (the export's base_model_name_or_path is replaced by it: no Hub here)"
    )
    parser.add_argument("--draft", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of prompt token-id lists")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--choices", required=True, help="medusa-llm 0.1's medusa_choices: [1, top-k of head 1, top-k of head 2, ...]")
    args = parser.parse_args()
    rope_base(args.base, modeling_llama_kv.LlamaRotaryEmbedding)
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads((Path(args.draft) / "config.json").read_text()) | {"base_model_name_or_path": args.base}
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        (Path(tmp) / "medusa_lm_head.pt").symlink_to(Path(args.draft).resolve() / "medusa_lm_head.pt")
        model = medusa_model.MedusaModel.from_pretrained(tmp, torch_dtype=torch.float32).eval()
    medusa_model.initialize_past_key_values = grouped_query_cache
    seen = {}
    update = medusa_model.update_inference_inputs

    def counted(input_ids, *rest):  # one call per verification step; its result holds the sequence so far
        out = update(input_ids, *rest)
        seen["ids"] = out[0]
        seen["after_step"].append(out[0].shape[1] - seen["prompt"])  # the step's bonus token is returned with the next
        return out

    medusa_model.update_inference_inputs = counted
    out = []
    for ids in json.loads(Path(args.prompts).read_text()):
        seen.update(ids=None, prompt=len(ids), after_step=[])
        start = time.perf_counter()
        with torch.no_grad():
            for _ in model.medusa_generate(
                torch.tensor([ids]), temperature=0.0, max_steps=args.max_new_tokens, medusa_choices=json.loads(args.choices)
            ):
                if seen["ids"].shape[1] - len(ids) >= args.max_new_tokens:
                    break
        steps = len(seen["after_step"])
        out.append(
            {
                "tokens": seen["ids"][0, len(ids) :].tolist(),
                "steps": steps,
                "after_step": seen["after_step"],
                "seconds": time.perf_counter() - start,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
