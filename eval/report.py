"""Writing an eval report: report.json, report.md (tables) and report.png (acceptance by depth,
τ per prompt category), each atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from draftheads.utils.atomic import atomic_write_text


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    tree = report["tree"]
    lines = [
        f"# draftheads eval: {report['heads']} ({report['head_type']}) on {report['base_model']}",
        "",
        f"{report['n_prompts']} prompts ({report['n_turns']} turns) from `{report['prompts']}`, "
        f"max {report['max_new_tokens']} new tokens, temperature {report['temperature']}, "
        f"{report['acceptance']} acceptance, {tree['kind']} tree (budget {tree.get('budget')}"
        f"{', and a lookup branch of up to %d copied tokens' % tree['lookup'] if tree.get('lookup') else ''}); "
        f"{report['device']}, {report['date']}.",
        "",
        "| method | new tokens | seconds | tokens/s | ours is faster by |",
        "|---|---:|---:|---:|---:|",
    ]
    ours = report["methods"]["ours"]["tokens_per_s"]
    hf_label = "HF generate (greedy)" if report["temperature"] == 0 else "HF generate (sampling)"
    settings = report.get("baselines") or {}

    def tuned(name: str) -> str:
        return f" ({settings[name]['tokens']} tokens, {settings[name]['ngram']}-gram: {settings[name]['chosen']})" if name in settings else ""

    names = {"ours": "draftheads tree decoding", "baseline": "draftheads autoregressive", "hf_generate": hf_label,
             "prompt_lookup": "HF prompt lookup" + tuned("prompt_lookup"), "lookup": "draftheads lookup alone" + tuned("lookup")}
    for name, m in report["methods"].items():
        label = names.get(name, name)
        paired = (report.get("speed_ratios") or {}).get(f"ours/{name}")  # the median of the repeats' ratios, as stated below
        ratio = paired["median"] if paired else ours / m["tokens_per_s"] if ours and m["tokens_per_s"] else None
        lines.append(f"| {label} | {m['tokens']} | {_fmt(m['seconds'], 2)} | {_fmt(m['tokens_per_s'], 2)} | {_fmt(ratio, 2)}x |")
    labels = {"ours": "ours", "baseline": "our autoregressive", "hf_generate": "HF generate", "prompt_lookup": "HF prompt lookup", "lookup": "our lookup alone"}
    ratios = report.get("speed_ratios") or {}
    if ratios:
        lines += [
            "",
            f"Speed ratios: median of {next(iter(ratios.values()))['repeats']} interleaved repeats, their range, and a 95% bootstrap interval over prompts and repeats.",
            "",
            "| ratio | median | min - max | 95% interval |",
            "|---|---:|---:|---:|",
        ]
        for pair, r in ratios.items():
            a, b = pair.split("/")
            best = " (the best baseline)" if a == "ours" and b == report.get("best_baseline") else ""
            lines.append(f"| {labels.get(a, a)} / {labels.get(b, b)}{best} | {r['median']:.3f}x | {r['min']:.3f} - {r['max']:.3f} | {r['ci95'][0]:.3f} - {r['ci95'][1]:.3f} |")
    lines += [
        "",
        "| τ (measured) | τ predicted | greedy mismatches | HF mismatches | steps |",
        "|---:|---:|---:|---:|---:|",
        f"| {_fmt(report['tau'])} | {_fmt(report['tau_predicted'])} | {_fmt(report['greedy_mismatches'])} | {_fmt(report['hf_generate_mismatches'])} | {report['steps']} |",
        "",
        "| depth | accepted (measured) | accepted (predicted) |",
        "|---:|---:|---:|",
    ]
    predicted = report.get("acceptance_by_depth_predicted") or []
    for d, value in enumerate(report["acceptance_by_depth"]):
        lines.append(f"| {d + 1} | {_fmt(value)} | {_fmt(predicted[d] if d < len(predicted) else None)} |")
    if report.get("verification"):
        lines += [
            "",
            f"Every emitted token re-scored teacher-forced by the model; a real mismatch lies more than {report['near_tie_epsilon']} below its position's best logit.",
            "",
            "| method | re-scored in | tokens emitted | tokens verified | real mismatches | near ties | max gap | p99 gap |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, table in report["verification"].items():
            for dtype, row in table.items():
                lines.append(f"| {name} | {dtype} | {row['tokens_emitted']} | {row['tokens_verified']} | {row['mismatches']} | {row['near_ties']} | "
                             f"{_fmt(row['gap_max'])} | {_fmt(row['gap_p99'])} |")
        lines += [""]
    breakdown = report["time_breakdown"]
    lines += ["", "| phase | ms per step | share of the decode loop |", "|---|---:|---:|"]
    for phase in ("draft", "verify", "accept", "other"):
        lines.append(f"| {phase} | {_fmt(breakdown['ms_per_step'][phase], 2)} | {_fmt(breakdown['fraction_of_decode_loop'][phase])} |")
    lines += ["", f"Engine overhead (accept + other) = {_fmt(breakdown['engine_overhead_fraction'])} of the decode loop.", ""]
    drift = report.get("backbone_drift")
    if drift:
        lines += [f"The backbone was trained with the heads ({report.get('backbone_mode')}): it is not the original model.", ""]
        if "error" in drift:
            lines += [f"Its drift from the original was not measured: {drift['error']}", ""]
        else:
            lines += [
                "| held-out tokens | agreement with the original | perplexity original | perplexity trained |",
                "|---:|---:|---:|---:|",
                f"| {drift['positions']} | {drift['agreement']:.2%} | {_fmt(drift['perplexity_original'])} | {_fmt(drift['perplexity_trained'])} |",
                "",
            ]
    if report["tau_by_category"]:
        lines += ["| category | τ |", "|---|---:|"] + [f"| {c} | {_fmt(t)} |" for c, t in report["tau_by_category"].items()] + [""]
    return "\n".join(lines)


def plot_png(report: dict) -> bytes:
    """Acceptance by depth (measured vs predicted) and τ per category, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    depths = list(range(1, len(report["acceptance_by_depth"]) + 1))
    left.bar([d - 0.2 for d in depths], report["acceptance_by_depth"], width=0.4, label="measured")
    if report.get("acceptance_by_depth_predicted"):
        left.bar([d + 0.2 for d in depths], report["acceptance_by_depth_predicted"], width=0.4, label="predicted")
    left.set(xlabel="depth", ylabel="fraction of steps accepting it", title=f"acceptance by depth (τ = {_fmt(report['tau'], 2)})", xticks=depths)
    left.legend()
    categories = list(report["tau_by_category"])
    right.bar(categories, [report["tau_by_category"][c] or 0 for c in categories])
    right.set(ylabel="τ", title="τ per prompt category")
    right.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: dict, out: Path) -> list[Path]:
    """report.json at `out`, and .md / .png beside it."""
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md, markdown(report))
    tmp = png.with_name(f".{png.name}.tmp")
    tmp.write_bytes(plot_png(report))
    tmp.replace(png)
    return [out, md, png]


SUMMARY_NAME = "eval_report.json"
"""The eval summary a heads folder carries (the model card and `draftheads push` read it)."""

SUMMARY_KEYS = (
    "prompts", "n_prompts", "n_turns", "max_new_tokens", "temperature", "dtype", "tree", "tau", "tau_predicted",
    "tau_predicted_source", "acceptance_by_depth", "speedup", "speedup_vs_hf_generate", "speedup_vs_prompt_lookup", "speed_ratios",
    "best_baseline", "speedup_vs_best_baseline", "baselines", "greedy_mismatches",
    "near_ties", "hf_generate_mismatches", "backbone_drift", "hardware", "date", "measured_by", "reference",
)


def write_summary(report: dict, heads_folder: Path) -> Path:
    """The report's summary as `eval_report.json` in the heads folder (atomically)."""
    path = heads_folder / SUMMARY_NAME
    atomic_write_text(path, json.dumps({k: report.get(k) for k in SUMMARY_KEYS}, indent=2) + "\n")
    return path
