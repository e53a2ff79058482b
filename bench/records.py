"""Records behind the figures: each measured table of README.md and bench/RESULTS.md is rendered
from a committed JSON record (`bench/records/<name>/record.json`: command, commit, machine, dtype,
date, versions, the figures and the table rows), never typed by hand.

    python bench/records.py from-eval REPORT.json --name NAME --command "draftheads eval ..."
    python bench/records.py render           # rewrite every <!-- record: NAME[+NAME...]/TABLE --> block from its records
    python bench/records.py render --check   # exit 1 when a block differs from its record or a figure row has none

A Markdown table row holding a decimal figure must lie inside a record block, or in a section
(`## ...`) that says `<!-- no record: why -->`: figures measured before records were kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "records"
DOCS = (ROOT / "README.md", ROOT / "bench" / "RESULTS.md")
BLOCK = re.compile(r"(<!-- record: (?P<name>[\w.+-]+)/(?P<table>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /record -->)", re.S)
FIGURE_ROW = re.compile(r"^\|.*(?<![\d.])\d+\.\d+(?![\d.])")  # a decimal number, not a version such as 0.34.0
SEPARATOR = re.compile(r"^\|[\s:|-]+\|$")
NO_RECORD = "<!-- no record:"
RECORD_VERSION = 1


@dataclass
class Table:
    """One rendered table of a record."""

    columns: list[str]
    """Column titles."""
    rows: list[list[str]]
    """Cells as printed (the figures behind them are in `Record.figures`)."""


@dataclass
class Record:
    """What one bench run measured: bench/records/<name>/record.json."""

    name: str
    """The record's folder name, and the first half of its blocks' names."""
    command: str
    """The command that measured it, as run."""
    commit: str
    """The git commit of the code that ran (`-dirty`: with uncommitted changes)."""
    date: str
    """When it was measured (UTC)."""
    machine: dict
    """Where: platform, CPU, threads, GPU."""
    dtype: str
    """The dtype the figures were measured in."""
    versions: dict
    """Library versions."""
    tables: dict[str, Table]
    """The tables rendered into the docs, by name."""
    figures: dict = field(default_factory=dict)
    """The raw numbers behind the tables."""
    record_version: int = RECORD_VERSION
    """This file's layout."""

    def write(self) -> Path:
        path = RECORDS / self.name / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".record.json.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def measured_now(cls, name: str, command: str, dtype: str, tables: dict[str, Table], figures: dict | None = None,
                     more_versions: dict | None = None) -> "Record":
        """A record of a run ending now, on this machine, at the checkout's commit."""
        import datetime

        from draftheads.eval.metrics import hardware, source_commit, versions

        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(
            name, command, source_commit() or "unknown", when, hardware(), dtype, versions() | (more_versions or {}), tables, figures or {}
        )

    @classmethod
    def read(cls, name: str, records: Path = RECORDS) -> "Record":
        path = records / name / "record.json"
        if not path.is_file():
            raise SystemExit(f"{path}: no such record")
        data = json.loads(path.read_text())
        if data.get("record_version") != RECORD_VERSION:
            raise SystemExit(f"{path}: record_version {data.get('record_version')}, this script reads {RECORD_VERSION}")
        return cls(**{**data, "tables": {k: Table(**t) for k, t in data["tables"].items()}})


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---" for _ in table.columns) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table.rows]) + "\n"


def render(text: str, records: Path = RECORDS) -> str:
    """`text` with every record block's body rendered from its record."""

    def body(match: re.Match) -> str:
        tables = []
        for name in match["name"].split("+"):  # a+b: the rows of several records' tables, in that order
            record = Record.read(name, records)
            if match["table"] not in record.tables:
                raise SystemExit(f"{records / name / 'record.json'}: no table {match['table']!r} (it has {', '.join(record.tables)})")
            tables.append(record.tables[match["table"]])
        if any(t.columns != tables[0].columns for t in tables):
            raise SystemExit(f"{match['name']}/{match['table']}: the records' tables have different columns")
        return match.group(1) + markdown_table(Table(tables[0].columns, [row for t in tables for row in t.rows])) + match.group(5)

    return BLOCK.sub(body, text)


def unrecorded_rows(text: str) -> list[tuple[int, str]]:
    """(line number, row) of each table row with a decimal figure that is neither in a record block
    nor in a section marked `<!-- no record: ... -->`."""
    inside = set()
    for match in BLOCK.finditer(text):
        first = text.count("\n", 0, match.start())
        inside.update(range(first, first + match.group(0).count("\n") + 1))
    found, section_marked = [], False
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("## "):
            section_marked = False
        section_marked = section_marked or line.startswith(NO_RECORD)
        header = number + 1 < len(lines) and SEPARATOR.match(lines[number + 1])
        if FIGURE_ROW.match(line) and not header and number not in inside and not section_marked:
            found.append((number + 1, line))
    return found


def check(docs=DOCS, records: Path = RECORDS) -> list[str]:
    """Every problem: a block that differs from its record, a figure row with no record."""
    problems = []
    for doc in docs:
        text = doc.read_text()
        if render(text, records) != text:
            problems.append(f"{doc}: a record block differs from its record (run python bench/records.py render)")
        problems += [f"{doc}:{n}: a figure row with no record: {row[:80]}" for n, row in unrecorded_rows(text)]
    return problems


def from_eval(report_path: Path, name: str, command: str, commit: str | None = None) -> Record:
    """A record of a `draftheads eval` report: the speed ratios and the verification table."""
    from draftheads.eval.report import read_report
    from draftheads.eval.schema import MethodName

    report = read_report(report_path)
    short = {MethodName.OURS: "ours", MethodName.AUTOREGRESSIVE: "our autoregressive", MethodName.HF_GENERATE: "HF generate",
             MethodName.HF_PROMPT_LOOKUP: "HF prompt lookup", MethodName.LOOKUP: "our lookup alone"}

    def label(method: str, best: bool) -> str:
        setting = report.baselines.get(method)
        notes = [f"swept: {setting['tokens']} tokens, {setting['ngram']}-gram"] if setting else []
        notes += ["the best baseline"] if best else []
        return short.get(method, method) + (f" ({'; '.join(notes)})" if notes else "")

    ratios = Table(
        ["ratio", f"median of {report.speed_ratios['ours/baseline'].repeats} repeats", "min - max", "95% interval (prompts x repeats)"], []
    )
    for pair, r in report.speed_ratios.items():
        a, b = pair.split("/")
        best = a == MethodName.OURS and b == report.best_baseline
        ratios.rows.append(
            [
                f"{short.get(a, a)} / {label(b, best)}",
                f"{r.median:.3f}x",
                f"{r.min:.3f} - {r.max:.3f}",
                f"{r.ci95[0]:.3f} - {r.ci95[1]:.3f}",
            ]
        )
    verified = Table(
        ["method", "re-scored in", "tokens emitted", "tokens verified", "real mismatches", "near ties", "max gap", "p99 gap"], []
    )
    for method, table in (report.verification or {}).items():
        for dtype, row in table.items():
            verified.rows.append(
                [
                    short.get(method, method),
                    dtype,
                    str(row.tokens_emitted),
                    str(row.tokens_verified),
                    str(row.mismatches),
                    str(row.near_ties),
                    f"{row.gap_max:.3f}",
                    f"{row.gap_p99:.3f}",
                ]
            )
    predicted = report.tau_predicted
    error = f" ({(predicted - report.tau) / report.tau:+.1%})" if predicted is not None and report.tau else ""
    prediction = Table(
        ["tree", "τ measured", "τ predicted (error)", "its bootstrap SD", "predicted from"],
        [
            [
                _tree_text(report.tree),
                f"{report.tau:.3f}",
                f"{predicted:.3f}{error}" if predicted is not None else "n/a",
                f"{report.tau_predicted_sd:.3f}" if report.tau_predicted_sd is not None else "n/a",
                report.tau_predicted_source.split(": the decode")[0],
            ]
        ],
    )
    figures = {
        "tau": report.tau,
        "tau_predicted_sd": report.tau_predicted_sd,
        "tau_predicted": report.tau_predicted,
        "speed_ratios": {k: dataclasses.asdict(v) for k, v in report.speed_ratios.items()},
        "best_baseline": report.best_baseline,
        "greedy_mismatches": report.greedy_mismatches,
        "n_prompts": report.n_prompts,
        "n_turns": report.n_turns,
        "max_new_tokens": report.max_new_tokens,
        "tree": report.tree,
        "baselines": {k: {"tokens": v["tokens"], "ngram": v["ngram"]} for k, v in report.baselines.items()},
        "report": str(report_path.resolve().relative_to(ROOT)) if report_path.resolve().is_relative_to(ROOT) else str(report_path),
    }
    commit = commit or report.versions.get("commit")
    if not commit:
        raise SystemExit(f"{report_path}: the report names no commit (written before reports carried it): give --commit")
    return Record(
        name,
        command,
        commit,
        report.date,
        report.hardware,
        report.dtype,
        report.versions,
        {"ratios": ratios, "verification": verified, "prediction": prediction},
        figures,
    )


def _tree_text(tree: dict) -> str:
    shape = {"none": "no drafted tree", "static": f"static, {tree.get('budget')} nodes"}.get(
        tree["kind"], f"dynamic {tree.get('budget')} x {tree.get('width')}"
    )
    return shape + (f" + {tree['lookup']}-token lookup branch" if tree.get("lookup") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description="records behind the figures of README.md and bench/RESULTS.md")
    verbs = parser.add_subparsers(dest="verb", required=True)
    made = verbs.add_parser("from-eval", help="a record of a draftheads eval report.json")
    made.add_argument("report", type=Path)
    made.add_argument("--name", required=True)
    made.add_argument("--command", required=True, help="the command that wrote the report, as run")
    made.add_argument("--commit", help="the code's commit, for reports written before they carried it")
    shown = verbs.add_parser("render", help="render every record block of the docs from its record")
    shown.add_argument("--check", action="store_true", help="change nothing; exit 1 on a stale block or a figure row with no record")
    args = parser.parse_args()
    if args.verb == "from-eval":
        print(f"wrote {from_eval(args.report, args.name, args.command, args.commit).write()}")
        return
    if args.check:
        problems = check()
        print("\n".join(problems) or "every record block matches its record; every figure row has one or is marked")
        sys.exit(1 if problems else 0)
    for doc in DOCS:
        text = doc.read_text()
        rendered = render(text)
        if rendered != text:
            doc.write_text(rendered)
            print(f"rendered {doc}")


if __name__ == "__main__":
    main()
