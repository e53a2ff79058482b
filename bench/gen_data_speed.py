"""Claims: batched self-distillation generation (the gen-data `hf` backend) produces tokens at least
4x faster than answering one prompt at a time, with identical answers; and (`--dtypes float32
bfloat16`) how much faster it is in bf16 than in fp32 on this machine.

    python bench/gen_data_speed.py [--base demo:smollm2-135m] [--prompts 32] [--batch-size 32] [--max-new-tokens 128]
        [--max-batch-tokens 8192] [--dtypes float32 bfloat16]

Both runs answer the same first turns of ShareGPT conversations with the same per-record seeds in
one process, one after the other (after a warm-up), through the same `HFGenerator`; only the
batch size (or, with --dtypes, the model's dtype at the given batch size) differs. Prints tokens/s
of each and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.data.config import SourceConfig
from draftheads.data.distill import answer_groups, record_seed
from draftheads.data.generate_hf import GenRequest, HFGenerator
from draftheads.data.sources import read_source
from draftheads.models.backbone import default_eos
from draftheads.decoding.sampling import SamplingConfig
from draftheads.models.backbone import BackboneConfig, load_backbone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="demo:smollm2-135m")
    parser.add_argument("--data", default="demo:sharegpt")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--dtypes", nargs="*", help="compare batched generation in these dtypes instead of batch sizes")
    args = parser.parse_args()
    if args.dtypes:
        compare_dtypes(args)
        return

    backbone = load_backbone(BackboneConfig(base=args.base))
    requests = first_turns(args, backbone)
    sampling = SamplingConfig(args.temperature)
    eos = default_eos(backbone)
    lengths = [len(r.prompt_ids) for r in requests]
    print(
        f"{len(requests)} prompts of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
        f"up to {args.max_new_tokens} new tokens, temperature {args.temperature}, torch threads {torch.get_num_threads()}, "
        f"at most {args.max_batch_tokens} padded prompt tokens a batch"
    )
    HFGenerator(backbone, sampling, args.batch_size, eos).generate(requests[: args.batch_size // 2 or 1])  # warm-up

    results = {}
    for batch_size in (1, args.batch_size):
        generator = HFGenerator(backbone, sampling, batch_size, eos, args.max_batch_tokens)
        start = time.perf_counter()
        answers = generator.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(a.tokens for a in answers)
        results[batch_size] = (answers, tokens, seconds)
        print(f"batch size {batch_size:3d}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s")
    single, batched = results[1], results[args.batch_size]
    same = sum(a.text == b.text for a, b in zip(single[0], batched[0]))
    ratio = (batched[1] / batched[2]) / (single[1] / single[2])
    print(f"ratio batched / one at a time: {ratio:.2f}x; identical answers: {same} of {len(requests)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, torch {torch.__version__}")


def first_turns(args, backbone) -> list[GenRequest]:
    """The first user turns of the data's conversations whose prompts fit `--max-prompt-tokens`."""
    formatter = ChatFormatter(backbone.tokenizer)
    conversations, _ = read_source(SourceConfig(path=args.data, limit=args.prompts * 4), require_assistant=False, skip_invalid=True)
    requests = []
    for conv in conversations:
        messages = answer_groups(conv.messages)[0]
        ids = formatter.prompt_ids(messages)
        if len(ids) <= args.max_prompt_tokens:
            requests.append(GenRequest(messages, ids, args.max_new_tokens, record_seed(0, conv.origin, 0)))
        if len(requests) == args.prompts:
            break
    return requests


def compare_dtypes(args) -> None:
    """Batched generation of the same requests in each dtype (a warm-up each), and the ratios."""
    results = {}
    for dtype in args.dtypes:
        backbone = load_backbone(BackboneConfig(base=args.base, dtype=dtype))
        requests = first_turns(args, backbone)
        generator = HFGenerator(backbone, SamplingConfig(args.temperature), args.batch_size, default_eos(backbone), args.max_batch_tokens)
        generator.generate(requests[: args.batch_size // 2 or 1])  # warm-up
        start = time.perf_counter()
        answers = generator.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(a.tokens for a in answers)
        results[dtype] = (answers, tokens / seconds)
        print(
            f"{dtype:>9}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s "
            f"(batch {args.batch_size}, {len(requests)} prompts)"
        )
    first = args.dtypes[0]
    for dtype in args.dtypes[1:]:
        same = sum(a.text == b.text for a, b in zip(results[first][0], results[dtype][0]))
        print(
            f"{dtype} / {first}: {results[dtype][1] / results[first][1]:.2f}x tokens/s; "
            f"identical answers: {same} of {len(results[first][0])}"
        )
    print(f"machine: {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
