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

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]


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


def save_checkpoint(accelerator, output_dir: str | Path, step: int, keep: int) -> Path:
    """Save the full training state for `step` on every process; keep the newest `keep`."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    staging = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
