"""Checkpoints: accelerate `save_state` into `output_dir/checkpoints/step-NNNNNNNN`, atomically.

Every process writes its part into a hidden temporary folder; once all are done the main process
renames it into place. A folder named `step-*` is therefore always complete, and `resume_from:
latest` can trust the newest one even after a `kill -9` in the middle of a save.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from draftheads.utils.errors import ConfigError

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """Where training is: saved with every checkpoint (accelerate custom object)."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Passes over the training data begun."""
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (by this process)."""
    target_tokens: int = 0
    """Next-token targets trained on so far, all processes: the x-axis of a learning curve."""
    seconds: float = 0.0
    """Wall time spent in optimizer steps so far (evaluations and checkpoints excluded)."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # a checkpoint without these counters starts them from zero
        self.target_tokens, self.seconds = state.get("target_tokens", 0), state.get("seconds", 0.0)


def checkpoint_root(output_dir: str | Path) -> Path:
    """The folder holding all checkpoints of a run."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from: `latest` (None when the run has none yet) or an explicit folder."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not path.is_dir():
        raise ConfigError(f"train.resume_from: {resume_from}: no such checkpoint folder")
    return path


def checkpoint_trained_only(accelerator, module) -> set[str]:
    """Make checkpoints hold only what trains: the frozen weights of a LoRA backbone are the base
    model's, reloaded from it at every start, so saving them would only cost disk and time (a 7B
    base: 14 GB per checkpoint instead of megabytes). Returns the names left out (empty when
    everything trains); `save_checkpoint` and `load_checkpoint` need them."""
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if frozen:

        def drop_frozen(models, weights, output_dir) -> None:
            for state in weights:
                for name in frozen & state.keys():
                    del state[name]

        accelerator.register_save_state_pre_hook(drop_frozen)
    return frozen


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def load_checkpoint(accelerator, module, path: Path, frozen: set[str]) -> None:
    """Restore a checkpoint into the prepared `module` (and the rest of the training state);
    weights left out as frozen, and only those, may be missing from it."""
    if not frozen:
        accelerator.load_state(str(path))
    elif _deepspeed(accelerator):
        accelerator.load_state(str(path), load_module_strict=False)
    else:
        from safetensors import safe_open

        weights = path / "model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), framework="pt") as handle:
                saved = set(handle.keys())
            expected = {k for k in module.state_dict() if k not in frozen}
            if saved != expected:
                raise ConfigError(
                    f"train.resume_from: {path} does not hold this recipe's trained weights: missing "
                    f"{sorted(expected - saved)[:5]}, unexpected {sorted(saved - expected)[:5]}"
                )
        accelerator.load_state(str(path), strict=False)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, keep: int, frozen: set[str] = frozenset()) -> Path:
    """Save the training state for `step` on every process (without the `frozen` weights); keep the newest `keep`."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    staging = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), **({"exclude_frozen_parameters": True} if frozen and _deepspeed(accelerator) else {}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
