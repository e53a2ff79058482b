"""Every measured table of README.md and bench/RESULTS.md is rendered from a committed record
(`bench/records.py`), and a figure row without one fails here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records():
    spec = importlib.util.spec_from_file_location("bench_records", ROOT / "bench" / "records.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_records"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_every_table_of_the_docs_is_its_records_rendering_and_every_figure_row_has_a_record(records):
    assert records.check() == []


def test_a_hand_edited_figure_or_an_unmarked_table_is_caught(records, tmp_path):
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert "| 1.199x |" in results
    edited = tmp_path / "RESULTS.md"
    edited.write_text(results.replace("| 1.199x |", "| 1.299x |", 1))
    assert any("differs from its record" in p for p in records.check([edited]))
    new = tmp_path / "NEW.md"
    new.write_text(
        "# x\n\n## A claim\n\n| heads | speedup |\n| --- | --- |\n| Hydra | 2.15x |\n\n"
        "## Old\n\n<!-- no record: before -->\n\n| a | 1.5 |\n"
    )
    (problem,) = records.check([new])
    assert f"{new}:7: a figure row with no record: | Hydra | 2.15x |" == problem  # the marked section's row passes, this one does not
    new.write_text("<!-- record: nowhere/ratios -->\n<!-- /record -->\n")
    with pytest.raises(SystemExit, match="nowhere/record.json: no such record"):
        records.check([new])


def test_the_ruler_record_is_what_the_script_makes_of_the_committed_report(records):
    folder = ROOT / "bench" / "records" / "ruler-medusa1-demo"
    committed = records.Record.read("ruler-medusa1-demo")
    made = records.from_eval(folder / "report.json", committed.name, committed.command, committed.commit)
    assert made.tables == committed.tables and made.figures == committed.figures and made.date == committed.date
