"""Claim: our exports load and decode right in the reference codes themselves, run for real: SafeAILab's
EAGLE (PyPI eagle-llm 1.2.1: EAGLE-1, static trees; and with --eagle-source its GitHub code: EAGLE-2
trees over EAGLE-1 and EAGLE-3 exports, full and reduced draft vocabulary) and FasterDecoding's Medusa
(PyPI medusa-llm 0.1), on the demo model, greedy, CPU. Every emitted token equals HF generate's, and
τ is within 2% of our engine's on the same tree (our `--tree reference` preset for EAGLE-2).

    python bench/reference_codes.py [--eagle1 HEADS] [--medusa HEADS] [--eagle3 HEADS] [--eagle3-8k HEADS] \
        [--eagle-source DIR] [--limit 8] [--max-new-tokens 64] [--venv DIR] [--record NAME]

The reference codes need transformers 4.x, so they run in a virtualenv of their own (built on first
use: about a minute), fed through the drivers in bench/reference/. The base folder is handed to them
as transformers 4.x reads it (`base_for_transformers4`): transformers 5 writes `rope_parameters` and
a `TokenizersBackend` tokenizer class, which 4.x would read as RoPE theta 10,000 (silently) and refuse.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec, engine_tree
from draftheads.eval.prompts import load_prompts
from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import ENGINES
from draftheads.models.formats import export_heads

DRIVERS = Path(__file__).resolve().parent / "reference"
REFERENCE_PACKAGES = ("transformers==4.53.3", "accelerate", "sentencepiece", "protobuf", "safetensors")
"""What the reference codes import besides torch (the version draftheads runs with)."""
REFERENCE_CODES = ("eagle-llm==1.2.1", "medusa-llm==0.1")
"""Installed without their pinned dependencies (which predate transformers 4.53)."""
EAGLE_TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]]
"""The static tree both codes draft EAGLE-1 heads with (EAGLE's tree_choices; 4 deep from 3-step heads)."""
MEDUSA_CHOICES = [1, 3, 2, 2]
"""medusa-llm 0.1's medusa_choices: top-3 of head 1, then top-2 of heads 2 and 3, every combination."""


def source_revision(folder: Path) -> str:
    """The checkout's commit (short): git's, else a REVISION file's (a `git archive` export has no .git)."""
    done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout.strip()
    revision = folder / "REVISION"
    if not revision.is_file():
        raise SystemExit(f"{folder}: no git checkout and no REVISION file naming the commit")
    return revision.read_text().strip()[:8]


def reference_venv(folder: Path) -> Path:
    """The reference virtualenv's python, built on first use."""
    python = folder / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}", *REFERENCE_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", *REFERENCE_CODES], check=True)
    return python


def base_for_transformers4(folder: Path, out: Path) -> Path:
    """`folder` as transformers 4.x reads it: its files linked, config.json with `rope_theta` and
    `torch_dtype` at the top level, tokenizer_config.json naming a 4.x tokenizer class."""
    out.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name not in ("config.json", "tokenizer_config.json"):
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"{folder}: RoPE scaling {rope.get('rope_type')} is out of this bench's scope")
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    config.setdefault("torch_dtype", config.pop("dtype", "float32"))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer.pop("backend", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=1))
    return out


def run_reference(python: Path, driver: str, base: Path, draft: Path, prompts: Path, new_tokens: int, options: list[str]) -> list[dict]:
    command = [str(python), str(DRIVERS / driver), "--base", str(base), "--draft", str(draft), "--prompts", str(prompts),
               "--max-new-tokens", str(new_tokens), *options]
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # the codes try the Hub for files a local folder lacks
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{driver} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def eagle2_options(source: Path, eagle3: bool) -> tuple[list[str], TreeSpec]:
    """The SafeAILab source's EAGLE-2 settings as our `reference` preset states them, and our tree
    from the same preset: the bench fails if the preset and the code disagree."""
    plan = ENGINES["reference"].drafting["eagle"]
    options = ["--source", str(source), "--eagle3", str(int(eagle3)), "--total-token", str(plan.draft_tokens),
               "--depth", str(plan.steps - 1), "--top-k", str(plan.topk)]  # their depth counts the levels after the first
    return options, engine_tree("reference", "eagle", plan.steps)


def cartesian_paths(choices: list[int]) -> list[list[int]]:
    """medusa-llm 0.1's cartesian tree (`[1, k1, k2, ...]`) as rank paths."""
    return [list(p) for depth in range(1, len(choices)) for p in itertools.product(*(range(k) for k in choices[1:depth + 1]))]


def their_tau_parts(answer: dict, limit: int, eos: tuple[int, ...]) -> tuple[int, int]:
    """(tokens after the first, steps) of a reference answer cut as our engine cuts its own: at
    `limit` tokens or the first EOS. The codes overshoot the limit by up to a step, stop only at the
    tokenizer's EOS, and return a step's bonus token only with the next step; a step counts once it
    has decided (returned or pending) the answer's last kept token."""
    tokens = answer["tokens"]
    ends = [i + 1 for i, t in enumerate(tokens) if t in eos][:1]
    kept = min([limit, len(tokens) + 1, *ends])
    decided = [n + 1 for n in answer["after_step"]]  # returned so far, plus the pending bonus token
    steps = next((k + 1 for k, n in enumerate(decided) if n >= kept), len(decided))
    return kept - 1, steps


def compare(name: str, draft: DraftModel, theirs: list[dict], prompts: list[list[int]], tree: TreeSpec, new_tokens: int) -> dict:
    """Their tokens against HF generate's, and τ against our engine's on the same tree (both τ:
    tokens after the prefill's first, per verification step, cut at the limit or the first EOS)."""
    backbone = draft.backbone
    engine = Engine(backbone, draft.heads, tree)
    eos = engine.default_eos()
    equal, ours_steps, ours_tokens, their_steps, their_tokens = 0, 0, 0, 0, 0
    for ids, answer in zip(prompts, theirs):
        ids_t = torch.tensor([ids])
        hf = backbone.model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=new_tokens, do_sample=False,
                                     eos_token_id=list(eos), pad_token_id=eos[0])[0, len(ids):].tolist()
        result = engine.generate(ids, GenerationConfig(max_new_tokens=new_tokens, eos_token_ids=eos))
        mine = answer["tokens"][: len(hf)]  # at most the pending bonus token short of HF's
        equal += mine == hf[: len(mine)] and len(mine) >= len(hf) - 1 and result.tokens == hf
        tokens, steps = their_tau_parts(answer, new_tokens, eos)
        ours_steps, ours_tokens = ours_steps + result.steps, ours_tokens + len(result.tokens) - 1
        their_steps, their_tokens = their_steps + steps, their_tokens + tokens
    ours, reference = ours_tokens / ours_steps, their_tokens / their_steps
    return {
        "code": name,
        "prompts": len(prompts),
        "equal": equal,
        "tau_reference": reference,
        "tau_ours": ours,
        "difference": reference / ours - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eagle1", default="outputs/ref-eagle1/heads", help="EAGLE-1 heads (full vocabulary)")
    parser.add_argument("--medusa", default="outputs/ref-medusa1-full/heads", help="Medusa-1 heads (full vocabulary)")
    parser.add_argument("--eagle3", default="outputs/ref-eagle3-full/heads", help="EAGLE-3 heads (full draft vocabulary)")
    parser.add_argument("--eagle3-8k", default="outputs/ref-eagle3-8k/heads", help="EAGLE-3 heads (8,192-token draft vocabulary)")
    parser.add_argument("--eagle-source", type=Path, help="a checkout of github.com/SafeAILab/EAGLE (the folder holding eagle/): "
                        "adds its EAGLE-2 decoding of the EAGLE-1 and both EAGLE-3 heads")
    parser.add_argument("--limit", type=int, default=8, help="MT-bench first turns, spread over the categories")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "draftheads" / "reference-venv")
    parser.add_argument("--record", help="write bench/records/NAME/record.json")
    args = parser.parse_args()
    python = reference_venv(args.venv)
    arms = [  # (row, heads, export layout, driver, driver options, our tree)
        ("SafeAILab EAGLE (eagle-llm 1.2.1), EAGLE-1, static tree", args.eagle1, "eagle", "eagle1_driver.py",
         ["--tree", json.dumps(EAGLE_TREE)], TreeSpec("static", paths=EAGLE_TREE)),
        ("FasterDecoding Medusa (medusa-llm 0.1), Medusa-1", args.medusa, "medusa", "medusa_driver.py",
         ["--choices", json.dumps(MEDUSA_CHOICES)], TreeSpec("static", paths=cartesian_paths(MEDUSA_CHOICES))),
    ]
    if args.eagle_source:
        for label, heads, eagle3 in (
            ("EAGLE-1", args.eagle1, False),
            ("EAGLE-3", args.eagle3, True),
            ("EAGLE-3, 8k draft vocabulary", args.eagle3_8k, True),
        ):
            options, tree = eagle2_options(args.eagle_source, eagle3)
            arms.append(
                (
                    f"SafeAILab EAGLE (GitHub {source_revision(args.eagle_source)}), {label}, EAGLE-2 tree",
                    heads,
                    "eagle",
                    "eagle2_driver.py",
                    options,
                    tree,
                )
            )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, heads, layout, driver, options, tree) in enumerate(arms):
            work = Path(tmp) / str(index)
            draft = DraftModel.from_pretrained(heads, dtype="float32")
            export = export_heads(heads, layout, work / "export", engine="reference")
            base = base_for_transformers4(Path(draft.backbone.location.path), work / "base")
            formatter = ChatFormatter(draft.backbone.tokenizer, model_name=draft.backbone.location.spec)
            prompts = [formatter.prompt_ids(p.messages([])) for p in load_prompts("mt-bench", args.limit)]
            (work / "prompts.json").write_text(json.dumps(prompts))
            theirs = run_reference(python, driver, base, export, work / "prompts.json", args.max_new_tokens, options)
            rows.append(compare(name, draft, theirs, prompts, tree, args.max_new_tokens))
            print(json.dumps(rows[-1]), flush=True)
    table = [
        [r["code"], f"{r['equal']} of {r['prompts']}", f"{r['tau_reference']:.3f}", f"{r['tau_ours']:.3f}", f"{r['difference']:+.1%}"]
        for r in rows
    ]
    print("\n".join(" | ".join(row) for row in table))
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from records import Record, Table

        columns = [
            "reference code, export",
            "answers equal to HF generate",
            "τ in the reference",
            "τ in our engine, same tree",
            "difference",
        ]
        command = "python bench/reference_codes.py " + " ".join(sys.argv[1:])
        record = Record.measured_now(args.record, command, "float32", {"reference": Table(columns, table)},
                                     {"rows": rows, "limit": args.limit, "max_new_tokens": args.max_new_tokens},
                                     {"reference": list(REFERENCE_PACKAGES + REFERENCE_CODES)})
        print(f"wrote {record.write()}")


if __name__ == "__main__":
    main()
