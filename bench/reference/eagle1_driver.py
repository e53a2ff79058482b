"""Run SafeAILab's EAGLE (PyPI eagle-llm 1.2.1, EAGLE-1 with a static tree) on an exported draft:
greedy answers and steps per prompt, as JSON on stdout. Runs in the reference virtualenv that
bench/reference_codes.py builds (transformers 4.x), never in draftheads' own.

    python eagle1_driver.py --base DIR --draft DIR --prompts FILE.json --max-new-tokens N --tree JSON
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from eagle.model import cnets, ea_model, modeling_llama_kv
from patches import count_steps, eagle_answer, rope_base



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of prompt token-id lists")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--tree", required=True, help="JSON list of rank paths (EAGLE's tree_choices)")
    args = parser.parse_args()
    rope_base(args.base, modeling_llama_kv.LlamaRotaryEmbedding, cnets.LlamaRotaryEmbedding)
    with tempfile.TemporaryDirectory() as tmp:  # eagle-llm 1.2.1 reads pytorch_model.bin only
        shutil.copy(Path(args.draft) / "config.json", Path(tmp) / "config.json")
        torch.save(load_file(str(Path(args.draft) / "model.safetensors")), Path(tmp) / "pytorch_model.bin")
        model = ea_model.EaModel.from_pretrained(base_model_path=args.base, ea_model_path=tmp, torch_dtype=torch.float32).eval()
    lengths = count_steps(ea_model)
    out = []
    for ids in json.loads(Path(args.prompts).read_text()):
        lengths.clear()
        start = time.perf_counter()
        with torch.no_grad():
            result = model.eagenerate(
                torch.tensor([ids]), temperature=0.0, max_new_tokens=args.max_new_tokens, tree_choices=json.loads(args.tree)
            )
        out.append(eagle_answer(result, ids, lengths, time.perf_counter() - start))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
