"""Run SafeAILab's EAGLE from its GitHub source (EAGLE-2's dynamic tree over EAGLE-1 or EAGLE-3
heads: `EaModel.from_pretrained(total_token, depth, top_k)` and `eagenerate`) on an exported draft:
greedy answers and steps per prompt, as JSON on stdout. Runs in the reference virtualenv that
bench/reference_codes.py builds (transformers 4.x), never in draftheads' own. The source's RoPE
reads the config's theta, so unlike the PyPI release it needs no patch.

    python eagle2_driver.py --source DIR --base DIR --draft DIR --eagle3 0|1 --prompts FILE.json \
        --max-new-tokens N --total-token T --depth D --top-k K
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from patches import count_steps, eagle_answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="a checkout of github.com/SafeAILab/EAGLE (the folder holding eagle/)")
    parser.add_argument("--base", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--eagle3", type=int, required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of prompt token-id lists")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--total-token", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--top-k", type=int, required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.source)  # before any installed `eagle` (PyPI eagle-llm installs one too)
    from eagle.model import ea_model

    model = ea_model.EaModel.from_pretrained(
        use_eagle3=bool(args.eagle3), base_model_path=args.base, ea_model_path=args.draft, total_token=args.total_token, depth=args.depth,
        top_k=args.top_k, torch_dtype=torch.float32
    ).eval()
    lengths = count_steps(ea_model)
    out = []
    for ids in json.loads(Path(args.prompts).read_text()):
        lengths.clear()
        start = time.perf_counter()
        with torch.no_grad():
            result = model.eagenerate(torch.tensor([ids]), temperature=0.0, max_new_tokens=args.max_new_tokens)
        out.append(eagle_answer(result, ids, lengths, time.perf_counter() - start))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
