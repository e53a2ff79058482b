"""Rewrite trained heads' calibration.json from their recipe's held-out rows, exactly as training's
last evaluation writes it, without training again: for heads trained before the file recorded
something new (here: the statistics per turn and answer offset that `draftheads eval` predicts a
decode's τ from, `RankStats.within`).

    python bench/recalibrate.py recipes/smollm2-135m/{medusa1,hydra,clover,eagle3}-quality.yaml

Each recipe's heads folder (`train.output_dir`/heads) must exist. The held-out top-1 by depth is
printed beside the one training logged last (metrics.jsonl): equal, or the rows or heads differ and
nothing is written (the check allows 1e-3: evaluation order may differ in the last digits).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from draftheads.data.features import open_feature_cache
from draftheads.decoding.planning.stats import calibration_json
from draftheads.decoding.tree import LOOKUP_NGRAM
from draftheads.models.heads_folder import CALIBRATION_NAME
from draftheads.models.backbone import load_backbone
from draftheads.models.draft_model import load_head_weights, read_head_config
from draftheads.models.registry import HEADS
from draftheads.train.config import load_recipe
from draftheads.train.loop import evaluate, held_out_loader, make_accelerator
from draftheads.utils.atomic import atomic_write_text


def recalibrate(recipe_path: str) -> None:
    recipe = load_recipe(recipe_path, ["train.trackers=[]"])
    if not recipe.data.feature_cache.path:
        raise SystemExit(f"{recipe_path}: recalibration reads the recipe's hidden-state cache (data.feature_cache.path)")
    folder = Path(recipe.train.output_dir) / "heads"
    accelerator = make_accelerator(recipe)
    backbone = load_backbone(recipe.model, device=accelerator.device)
    config = read_head_config(folder)
    heads = HEADS.get(config.head_type).build(config, backbone)
    load_head_weights(heads, folder)
    _, held_set, _ = open_feature_cache(recipe, backbone)
    loader = held_out_loader(held_set, recipe, backbone, accelerator)
    metrics, stats = evaluate(
        heads.eval(), backbone, loader, accelerator, recipe.train.eval_batches, recipe.train.loss.chunk_size, walks_ngram=LOOKUP_NGRAM
    )
    logged = json.loads((Path(recipe.train.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])["top1"]
    print(
        f"{folder}: held-out top-1 {' / '.join(f'{v:.4f}' for v in metrics['top1'])}; "
        f"training logged {' / '.join(f'{v:.4f}' for v in logged)}"
    )
    if any(abs(a - b) > 1e-3 for a, b in zip(metrics["top1"], logged)):
        raise SystemExit(f"{folder}: not the rows or heads training evaluated last; calibration.json left as it was")
    atomic_write_text(folder / CALIBRATION_NAME, calibration_json(stats, "held-out rows of the training data"))
    cells = stats.within(2, 128)
    if cells is not None:
        print(f"  {stats.positions} positions; {cells.positions} of them where a decode of 2 turns x 128 new tokens drafts; "
              f"top-1 at depth 1: {stats.depth_topk[0][0]:.3f} all, {cells.depth_topk[0][0]:.3f} there")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rewrite trained heads' calibration.json from their recipe's held-out rows.")
    parser.add_argument("recipes", nargs="+", help="training recipes whose train.output_dir/heads exist")
    for path in parser.parse_args().recipes:
        recalibrate(path)
