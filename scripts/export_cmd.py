"""`draftheads export FORMAT HEADS --out DIR [--dtype bf16|fp16|fp32] [--base SPEC] [--engine all|vllm|sglang|reference|trtllm]`."""

from __future__ import annotations

import argparse

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `export`."""
    from draftheads.models.engines import ALL, ENGINES
    from draftheads.models.formats import FORMATS

    parser.add_argument("format", choices=sorted(FORMATS), help="; ".join(f"{k}: {v.description}" for k, v in FORMATS.items()))
    parser.add_argument("heads", metavar="HEADS", help="a heads folder (or Hub id)")
    parser.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor dtype of the export")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument(
        "--engine",
        choices=(ALL, *ENGINES),
        default=ALL,
        help="the engine to load the export (all: every engine that loads the layout; models/engines.py lists where they differ)",
    )


def run(args: argparse.Namespace) -> int:
    """Export the heads, state in its README the τ each target engine's drafting is predicted to
    reach, and say where."""
    from draftheads.models.formats import export_heads
    from draftheads.utils.atomic import atomic_write_text

    section = engine_taus(args.heads, args.format, args.engine)  # first: a bad calibration leaves no export behind
    out = export_heads(args.heads, args.format, args.out, DTYPES[args.dtype], args.base, args.engine)
    if section:
        readme = out / "README.md"
        atomic_write_text(readme, readme.read_text().rstrip("\n") + "\n\n" + section)
    print(f"exported {args.heads} as {args.format} ({args.dtype}, for {args.engine}) into {out}; serving commands in {out / 'README.md'}")
    return 0


def engine_taus(heads: str, layout: str, engine: str) -> str:
    """The README section of τ predicted for each target engine's own drafting (`--tree ENGINE`),
    from the heads' calibration; empty when the heads carry none."""
    from draftheads.decoding.planning.stats import read_calibration
    from draftheads.decoding.tree import engine_tree
    from draftheads.eval.metrics import predicted_tau
    from draftheads.models.draft_model import read_head_config, resolve_folder
    from draftheads.models.engines import ENGINES

    folder = resolve_folder(heads, "heads")
    held_out = read_calibration(folder)
    if held_out is None:
        return ""
    config = read_head_config(folder)
    saved = config.tree.paths if config.tree is not None else None
    measured = max(map(len, held_out[0].path_counts), default=0)
    lines = ["## τ predicted for each engine's drafting", ""]
    for name, rules in ENGINES.items():
        if layout not in rules.drafting or engine not in ("all", name):
            continue
        tree = engine_tree(name, layout, config.num_heads, saved)
        tau, _, _ = predicted_tau(tree, held_out[0], held_out, [])
        deepest = (tree.depth if tree.kind == "eagle2" else max(map(len, tree.paths)))
        floor = f"; the calibration measured {measured} depths, so deeper drafts are not counted: a floor" if deepest > measured else ""
        lines.append(
            f"- {rules.version}: τ {tau:.2f} predicted ({tree_words(tree.describe())}{floor}); "
            f"measure it with `draftheads eval --heads {heads} --tree {name}`."
        )
    where = held_out[1]
    return "\n".join(lines + ["", f"Predicted from the heads' calibration: {where}.", ""])


def tree_words(shape: dict) -> str:
    """A tree's report description (`TreeSpec.describe`) in a few words."""
    words = f"{shape['kind']} tree of {shape['budget']} drafted nodes"
    return words + "".join(f", {key} {shape[key]}" for key in ("width", "depth") if key in shape)
