"""Writing an eval report: report.json, report.md (tables) and report.png (acceptance by depth,
τ per prompt category), each atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from draftheads.eval.schema import EvalReport, MethodName
from draftheads.models.heads_folder import SUMMARY_NAME
from draftheads.utils.atomic import atomic_write_text


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


LABELS = {
    MethodName.OURS: "draftheads tree decoding",
    MethodName.AUTOREGRESSIVE: "draftheads autoregressive",
    MethodName.HF_GENERATE: "HF generate",
    MethodName.HF_PROMPT_LOOKUP: "HF prompt lookup",
    MethodName.LOOKUP: "draftheads lookup alone",
}
"""How report.md names each method."""
SHORT = {MethodName.OURS: "ours", MethodName.AUTOREGRESSIVE: "our autoregressive", MethodName.HF_GENERATE: "HF generate",
         MethodName.HF_PROMPT_LOOKUP: "HF prompt lookup", MethodName.LOOKUP: "our lookup alone"}
"""How a ratio names each method."""


def markdown(report: EvalReport) -> str:
    """The report as Markdown tables."""
    tree = report.tree
    lookup = f", and a lookup branch of up to {tree['lookup']} copied tokens" if tree.get("lookup") else ""
    lines = [
        f"# draftheads eval: {report.heads} ({report.head_type}) on {report.base_model}",
        "",
        f"{report.n_prompts} prompts ({report.n_turns} turns) from `{report.prompts}`, max {report.max_new_tokens} new tokens, "
        f"temperature {report.temperature}, {report.acceptance} acceptance, {tree['kind']} tree (budget {tree.get('budget')}{lookup}); "
        f"{report.device}, {report.dtype}, {report.date}.",
        "",
        *_method_lines(report),
        *_ratio_lines(report),
        "",
        "| τ (measured) | τ predicted | its bootstrap SD | greedy mismatches | HF mismatches | steps |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(report.tau)} | {_fmt(report.tau_predicted)} | {_fmt(report.tau_predicted_sd)} | {_fmt(report.greedy_mismatches)} | "
        f"{_fmt(report.hf_generate_mismatches)} | {report.steps} |",
        "",
        f"τ predicted from: {report.tau_predicted_source}.",
        "",
        "τ counts the tokens each verification step emitted (drafts accepted past an end of answer or the token limit are not counted).",
        "",
        "| depth | accepted (measured) | accepted (predicted) |",
        "|---:|---:|---:|",
    ]
    predicted = report.acceptance_by_depth_predicted or []
    for d, value in enumerate(report.acceptance_by_depth):
        lines.append(f"| {d + 1} | {_fmt(value)} | {_fmt(predicted[d] if d < len(predicted) else None)} |")
    lines += _verification_lines(report) + _time_lines(report) + _drift_lines(report)
    if report.tau_by_category:
        lines += ["| category | τ |", "|---|---:|"] + [f"| {c} | {_fmt(t)} |" for c, t in report.tau_by_category.items()] + [""]
    return "\n".join(lines)


def _method_lines(report: EvalReport) -> list[str]:
    lines = ["| method | new tokens | seconds | tokens/s | ours is faster by |", "|---|---:|---:|---:|---:|"]
    for name, m in report.methods.items():
        setting = report.baselines.get(name)
        label = LABELS.get(name, name) + (f" ({setting['tokens']} tokens, {setting['ngram']}-gram: {setting['chosen']})" if setting else "")
        if name == MethodName.HF_GENERATE:
            label += " (greedy)" if report.temperature == 0 else " (sampling)"
        ratio = 1.0 if name == MethodName.OURS else report.ratio(MethodName.OURS, name)
        lines.append(
            f"| {label} | {m.tokens} | {_fmt(m.seconds, 2)} | {_fmt(m.tokens_per_s, 2)} | {_fmt(ratio, 2) + 'x' if ratio else 'n/a'} |"
        )
    return lines


def _ratio_lines(report: EvalReport) -> list[str]:
    if not report.speed_ratios:
        return []
    lines = [
        "",
        f"Speed ratios: median of {next(iter(report.speed_ratios.values())).repeats} interleaved repeats, their range, "
        "and a 95% bootstrap interval over prompts and repeats.",
        "",
        "| ratio | median | min - max | 95% interval |",
        "|---|---:|---:|---:|",
    ]
    for pair, r in report.speed_ratios.items():
        a, b = pair.split("/")
        best = " (the best baseline)" if a == MethodName.OURS and b == report.best_baseline else ""
        lines.append(
            f"| {SHORT.get(a, a)} / {SHORT.get(b, b)}{best} | {r.median:.3f}x | "
            f"{r.min:.3f} - {r.max:.3f} | {r.ci95[0]:.3f} - {r.ci95[1]:.3f} |"
        )
    return lines


def _verification_lines(report: EvalReport) -> list[str]:
    if not report.verification:
        return []
    lines = [
        "",
        "Every emitted token re-scored teacher-forced by the model; "
        f"a real mismatch lies more than {report.near_tie_epsilon} below its position's best logit.",
        "",
        "| method | re-scored in | tokens emitted | tokens verified | real mismatches | near ties | max gap | p99 gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, table in report.verification.items():
        for dtype, row in table.items():
            lines.append(
                f"| {name} | {dtype} | {row.tokens_emitted} | {row.tokens_verified} | "
                f"{row.mismatches} | {row.near_ties} | {_fmt(row.gap_max)} | {_fmt(row.gap_p99)} |"
            )
    return lines + [""]


def _time_lines(report: EvalReport) -> list[str]:
    breakdown = report.time_breakdown
    lines = ["", "| phase | ms per step | share of the decode loop |", "|---|---:|---:|"]
    for phase in ("draft", "verify", "accept", "other"):
        lines.append(f"| {phase} | {_fmt(breakdown.ms_per_step[phase], 2)} | {_fmt(breakdown.fraction_of_decode_loop[phase])} |")
    return lines + ["", f"Engine overhead (accept + other) = {_fmt(breakdown.engine_overhead_fraction)} of the decode loop.", ""]


def _drift_lines(report: EvalReport) -> list[str]:
    drift = report.backbone_drift
    if not drift:
        return []
    lines = [f"The backbone was trained with the heads ({report.backbone_mode}): it is not the original model.", ""]
    if "error" in drift:
        return lines + [f"Its drift from the original was not measured: {drift['error']}", ""]
    return lines + [
        "| held-out tokens | agreement with the original | perplexity original | perplexity trained |",
        "|---:|---:|---:|---:|",
        f"| {drift['positions']} | {drift['agreement']:.2%} | {_fmt(drift['perplexity_original'])} | {_fmt(drift['perplexity_trained'])} |",
        "",
    ]


def plot_png(report: EvalReport) -> bytes:
    """Acceptance by depth (measured vs predicted) and τ per category, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    depths = list(range(1, len(report.acceptance_by_depth) + 1))
    left.bar([d - 0.2 for d in depths], report.acceptance_by_depth, width=0.4, label="measured")
    if report.acceptance_by_depth_predicted:
        left.bar([d + 0.2 for d in depths], report.acceptance_by_depth_predicted, width=0.4, label="predicted")
    left.set(
        xlabel="depth", ylabel="fraction of steps accepting it", title=f"acceptance by depth (τ = {_fmt(report.tau, 2)})", xticks=depths
    )
    left.legend()
    categories = list(report.tau_by_category)
    right.bar(categories, [report.tau_by_category[c] or 0 for c in categories])
    right.set(ylabel="τ", title="τ per prompt category")
    right.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: EvalReport, out: Path) -> list[Path]:
    """report.json at `out`, and .md / .png beside it."""
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    atomic_write_text(out, json.dumps(report.to_json(), indent=2) + "\n")
    atomic_write_text(md, markdown(report))
    tmp = png.with_name(f".{png.name}.tmp")
    tmp.write_bytes(plot_png(report))
    tmp.replace(png)
    return [out, md, png]


def write_summary(summary: dict, heads_folder: Path) -> Path:
    """A report's summary (`EvalReport.summary()`) as SUMMARY_NAME in the heads folder (atomically)."""
    path = heads_folder / SUMMARY_NAME
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return path


def read_report(path: Path) -> EvalReport:
    """A report.json written by `write_report`."""
    return EvalReport.from_json(json.loads(Path(path).read_text()), origin=str(path))
