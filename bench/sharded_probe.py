"""Run under `accelerate launch` (or alone): set up a training run from a recipe (`-` for none) and
`key=value` overrides, then write to OUT (main process) the features of a fixed batch, the first
optimizer step's loss, the share of the decoder layers' parameters each process holds, and each
process's peak resident memory over `--steps` optimizer steps (DeepSpeed prefetches from the
second step on, once it has traced the first) its resident memory after set-up and after the
steps, what a DeepSpeed engine gathers ahead, and the heads' weights after the steps.

    python bench/sharded_probe.py [--steps N] [--deepspeed-defaults] OUT RECIPE|- key=value ...

`bench/zero3_online.py` and `tests/train/test_loop.py` compare a DeepSpeed ZeRO-3 launch of it with
one process: the features are computed through the sharded layers (each gathered as it runs), the
loss through the training forward."""

from __future__ import annotations

import argparse
import resource

import torch


def layer_shares(run) -> dict[str, int]:
    """Elements of the decoder layers' parameters: all of them ("total"), those sharded ("sharded":
    DeepSpeed keeps parameters under its persistence threshold, norms and small matrices, whole in
    every process) and how many of the sharded ones this process holds between steps ("held")."""
    shares = {"total": 0, "sharded": 0, "held": 0}
    for p in run.backbone.layers.parameters():
        full = getattr(p, "ds_numel", p.numel())  # a ZeRO-3 parameter keeps its partition in ds_tensor
        shares["total"] += full
        if hasattr(p, "ds_tensor") and not p.ds_persist:
            shares["sharded"] += full
            shares["held"] += p.data.numel() + p.ds_tensor.numel()
    return shares


def resident_now() -> int:
    """This process's resident set size now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(out: str, recipe: str, settings: list[str], steps: int, deepspeed_defaults: bool) -> None:
    from accelerate.utils import gather_object

    from draftheads.data.collate import Collator
    from draftheads.train import loop
    from draftheads.train.config import load_recipe
    from draftheads.train.joint import batch_features
    from draftheads.train.loop import _batches, _optimizer_step, _set_up, _trained_state_dict

    if deepspeed_defaults:  # the comparison: what ZeRO-3 holds when it gathers as DeepSpeed's defaults say
        loop.gather_one_layer_ahead = lambda accelerator, layers: None

    run = _set_up(load_recipe(None if recipe == "-" else recipe, settings), progress=False)
    set_up = resident_now()
    rows = run.train_loader.dataset
    batch = Collator(pad_token_id=run.backbone.tokenizer.pad_token_id or 0)([rows[0], rows[1]])  # the same rows on every process
    features = batch_features(run.backbone, batch, sorted(set(run.layers)))
    batches = _batches(run.train_loader, run.state, run.accelerator)
    loss, *_ = _optimizer_step(run, batches)
    for _ in range(steps - 1):  # DeepSpeed prefetches from the second step on, once it has traced the first
        _optimizer_step(run, batches)
    trained = _trained_state_dict(run)  # collective: the heads whole on the main process
    shares = gather_object([layer_shares(run)])  # after a step: what each process keeps in steady state
    peaks = gather_object([(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, resident_now(), set_up)])
    if run.accelerator.is_main_process:
        zero = getattr(getattr(run.module, "_config", None), "zero_config", None)  # a DeepSpeed engine's ZeRO settings
        gathering = {k: getattr(zero, k) for k in ("prefetch_bucket_size", "max_live_parameters", "max_reuse_distance")} if zero else None
        torch.save({"features": features, "loss": loss, "shares": shares, "peaks": peaks, "sharded": bool(run.role.module is not None),
                    "gathering": gathering, "heads": {k: v for k, v in trained.items() if k.startswith("heads.")}}, out)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="where the main process writes its findings (torch.save)")
    parser.add_argument("recipe", help="a recipe YAML, or - for the defaults")
    parser.add_argument("settings", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps before memory is read (the loss is the first's)")
    parser.add_argument(
        "--deepspeed-defaults", action="store_true", help="leave ZeRO-3's gathering at DeepSpeed's defaults (no layer bound)"
    )
    args = parser.parse_args()
    main(args.out, args.recipe, args.settings, args.steps, args.deepspeed_defaults)
