"""Every bench script still runs: its `--help` parses (which imports everything it uses)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_help_runs(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/x.py` runs it: siblings import
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_reference_answers_are_cut_as_ours(monkeypatch):
    """bench/reference_codes.py counts a reference code's τ as our engine counts its own: cut at the
    limit or the first EOS, a step's bonus token counted when decided (returned with the next)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from reference_codes import their_tau_parts

    answer = {"tokens": list(range(10, 22)), "after_step": [3, 7, 12]}  # 12 returned in 3 steps, 13 decided
    assert their_tau_parts(answer, 64, eos=(99,)) == (12, 3)  # no cut: the pending bonus counts
    assert their_tau_parts(answer, 8, eos=(99,)) == (7, 2)  # the limit: 8 decided after step 2
    assert their_tau_parts(answer, 4, eos=(99,)) == (3, 1)
    assert their_tau_parts(answer, 64, eos=(14,)) == (4, 2)  # EOS is the 5th token, decided after step 2
