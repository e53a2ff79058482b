"""Learning curves of training runs: held-out top-1 by depth and the expected τ against the target
tokens trained on (and the training wall time), read from each run's `metrics.jsonl`.

    python bench/learning_curves.py outputs/smollm2-135m-medusa1-quality outputs/smollm2-135m-eagle3-quality ...
        [--out bench/learning_curves.png]

Prints one table per run and draws one panel per run (top-1 by depth on the left axis, expected τ of
the 8 x 4 dynamic tree on the right). Whether a curve is still rising at its last evaluation is what
says if more data or more steps would pay.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_run(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (train the run first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_run(name: str, evals: list[dict]) -> None:
    print(f"\n{name}")
    print("| step | target tokens | train s | held-out top-1 by depth | expected τ (8x4) | expected τ (16x8) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for e in evals:
        top1 = " / ".join(f"{v:.3f}" for v in e["top1"])
        tau = e.get("expected_tau", {})
        print(f"| {e['step']} | {e.get('target_tokens', 'n/a'):,} | {e.get('train_seconds', float('nan')):.0f} | {top1} | "
              f"{tau.get('8x4', float('nan')):.3f} | {tau.get('16x8', float('nan')):.3f} |")


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, (name, evals) in zip(axes[0], runs.items()):
        tokens = [e.get("target_tokens", e["step"]) / 1e6 for e in evals]
        for depth in range(len(evals[0]["top1"])):
            ax.plot(tokens, [e["top1"][depth] for e in evals], marker="o", ms=3, label=f"top-1 depth {depth + 1}")
        ax.set_xlabel("target tokens trained on (millions)")
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(tokens, [e.get("expected_tau", {}).get("8x4", float("nan")) for e in evals], "k--", label="expected τ (8x4)")
        twin.set_ylim(1, 4)
        if ax is axes[0][0]:
            ax.set_ylabel("held-out top-1")
            ax.legend(fontsize=7, loc="upper left")
        if ax is axes[0][-1]:
            twin.set_ylabel("expected τ, 8 x 4 dynamic tree")
            twin.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"\nplot: {out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders")
    parser.add_argument("--out", type=Path, default=Path("bench/learning_curves.png"))
    args = parser.parse_args()
    runs = {folder.name: read_run(folder) for folder in args.runs}
    for name, evals in runs.items():
        print_run(name, evals)
    plot(runs, args.out)


if __name__ == "__main__":
    main()
