"""The typed eval report: report.json read back whole, older layouts read or refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from draftheads.eval.report import markdown, read_report
from draftheads.eval.schema import SCHEMA_VERSION, EvalReport, MethodName, SpeedRatio, VerificationRow
from draftheads.utils.errors import ConfigError

RULER_RECORD = Path(__file__).resolve().parents[2] / "bench" / "records" / "ruler-medusa1-demo" / "report.json"


def test_a_version_1_ruler_report_reads_typed_and_writes_back_the_same_figures(tmp_path):
    old = json.loads(RULER_RECORD.read_text())
    report = read_report(RULER_RECORD)
    assert report.schema_version == SCHEMA_VERSION and isinstance(report.speed_ratios["ours/baseline"], SpeedRatio)
    assert isinstance(report.verification[MethodName.OURS]["bfloat16"], VerificationRow)
    # the version-1 copies of ratios equal the typed ones they were copies of
    assert report.ratio(MethodName.OURS, MethodName.HF_GENERATE) == old["speedup_vs_hf_generate"]
    assert report.summary()["speedup_vs_best_baseline"] == old["speedup_vs_best_baseline"]
    again = EvalReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report and markdown(again) == markdown(report)


def test_other_layouts_are_refused_naming_the_file(tmp_path):
    data = read_report(RULER_RECORD).to_json()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data | {"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ConfigError, match=f"{path}: schema_version {SCHEMA_VERSION + 1}"):
        read_report(path)
    path.write_text(json.dumps(data | {"surprise": 1}))
    with pytest.raises(ConfigError, match="unknown field 'surprise'"):
        read_report(path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "tau"}))
    with pytest.raises(ConfigError, match="tau"):
        read_report(path)
    old = json.loads(RULER_RECORD.read_text())
    del old["speed_ratios"]  # a report from before the ruler: its ratios were single runs
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="schema_version 1"):
        read_report(path)


def test_method_names_are_the_strings_report_json_holds():
    assert json.dumps({MethodName.OURS: MethodName.AUTOREGRESSIVE}) == '{"ours": "baseline"}'
    assert f"{MethodName.HF_PROMPT_LOOKUP}/x" == "prompt_lookup/x"
