"""The model card (README.md) written next to exported heads and uploaded with them."""

from __future__ import annotations

from draftheads.models.heads.base import HeadConfig


def model_card(config: HeadConfig, training: dict | None = None, evaluation: dict | None = None) -> str:
    """Markdown card: base model, head type and sizes, training data and steps, held-out accuracy,
    and acceptance length / speedup when an evaluation report is given."""
    base = config.base
    settings = {k: v for k, v in config.to_json_dict().items() if k not in ("base", "head_type")}
    lines = ["---", "library_name: draftheads"]
    if base and base.hub_id:
        lines.append(f"base_model: {base.hub_id}")
    lines += [
        "tags: [speculative-decoding, draft-heads, " + config.head_type + "]",
        "---",
        "",
        f"# {config.head_type} draft heads for {base.model if base else 'an unknown base model'}",
        "",
        "Speculative-decoding draft heads trained with draftheads. Load them with",
        "`DraftModel.from_pretrained(\"<this repo>\")`; the base model is loaded from the id below and",
        "checked against the hidden size, vocabulary and tokenizer recorded here.",
        "",
        "## Base model",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    if base:
        lines += [
            f"| model | `{base.model}`" + (f" ({base.hub_id})" if base.hub_id and base.hub_id != base.model else "") + " |",
            f"| revision | `{base.revision or 'n/a'}` |",
            f"| hidden size | {base.hidden_size} |",
            f"| vocabulary | {base.vocab_size} |",
            f"| tokenizer fingerprint | `{base.tokenizer_fingerprint}` |",
        ]
    lines += ["", "## Heads", "", "| setting | value |", "| --- | --- |", f"| head type | `{config.head_type}` |"]
    lines += [f"| {k} | `{v}` |" for k, v in settings.items()]
    imported = (training or {}).get("imported_from")
    if imported:
        lines += [
            "",
            "## Provenance",
            "",
            f"Converted by `draftheads import {imported['format']}` from `{imported['source']}`, not trained here.",
        ]
    elif training:
        lines += ["", "## Training", "", f"- steps: {training.get('steps')}", f"- data: {', '.join(training.get('data', []))}"]
        lines += [f"- rows: {training.get('train_rows')} training, {training.get('held_out_rows')} held out"]
        final, first = training.get("final_eval"), training.get("first_eval")
        if final:
            lines += ["", "Held-out accuracy per head (head k predicts the token k steps after the next):", ""]
            lines += ["| head | top-1 | top-5 | top-1 before training |", "| --- | --- | --- | --- |"]
            for k, (t1, t5) in enumerate(zip(final["top1"], final["top5"])):
                before = f"{first['top1'][k]:.3f}" if first else "n/a"
                lines.append(f"| {k + 1} | {t1:.3f} | {t5:.3f} | {before} |")
    joint = (training or {}).get("backbone")
    if joint:
        lines += _backbone_section(joint)
    if evaluation:
        lines += ["", "## Decoding", "", *_decoding_lines(evaluation)]
        drift = evaluation.get("backbone_drift")
        if drift and "agreement" in drift:
            lines.append(f"- backbone agreement with the original on held-out data: {drift['agreement']:.2%}")
    return "\n".join(lines) + "\n"


def _backbone_section(joint: dict) -> list[str]:
    """The card's statement that the backbone was trained too, and how far it moved."""
    stored = (
        "a LoRA adapter (`adapter/`, peft format)"
        if joint["mode"] == "lora" and not joint.get("merged")
        else "a full model folder (`backbone/`)"
    )
    lines = [
        "",
        "## Backbone: changed by training",
        "",
        f"The base model was trained together with the heads (Medusa-2, mode `{joint['mode']}`, objective "
        f"`{joint['objective']}`): {joint['trainable_parameters']:,} of {joint['total_parameters']:,} parameters trained. "
        f"The trained backbone ships here as {stored}; `DraftModel.from_pretrained` loads it, and what it serves "
        "is no longer the original model.",
    ]
    drift = joint.get("drift")
    if drift:
        lines += [
            "",
            f"On {drift['positions']} held-out tokens:",
            "",
            "| measure | value |",
            "| --- | --- |",
            f"| greedy agreement with the original (same argmax) | {drift['agreement']:.2%} |",
            f"| perplexity, original backbone | {drift['perplexity_original']:.3f} |",
            f"| perplexity, trained backbone | {drift['perplexity_trained']:.3f} |",
        ]
    return lines


def _decoding_lines(evaluation: dict) -> list[str]:
    """The measured decoding numbers of an eval summary (eval_report.json)."""

    def fmt(value, suffix=""):
        return f"{value:.3f}{suffix}" if isinstance(value, float) else "n/a"

    tree = evaluation.get("tree") or {}
    lines = [
        f"Measured by {evaluation.get('measured_by') or '`draftheads eval`'} "
        f"on {evaluation.get('n_prompts')} prompts of `{evaluation.get('prompts')}` "
        f"({evaluation.get('max_new_tokens')} new tokens per turn, temperature {evaluation.get('temperature')}, "
        f"{evaluation.get('dtype')}, {tree.get('kind')} tree), {evaluation.get('date')}:",
        "",
        f"- acceptance length τ: {fmt(evaluation.get('tau'))} (predicted {fmt(evaluation.get('tau_predicted'))}"
        + (f"; {evaluation['tau_predicted_source']})" if evaluation.get("tau_predicted_source") else ")"),
        f"- speedup over autoregressive decoding (same engine): {fmt(evaluation.get('speedup'), 'x')}",
        f"- speedup over HF `generate`: {fmt(evaluation.get('speedup_vs_hf_generate'), 'x')}; "
        f"over HF prompt lookup: {fmt(evaluation.get('speedup_vs_prompt_lookup'), 'x')}",
        f"- emitted tokens that are real mismatches, every token re-scored by the model: {evaluation.get('greedy_mismatches')} "
        f"(near ties: {evaluation.get('near_ties', evaluation.get('near_tie_divergences'))})",
        f"- accepted drafts per step by depth: {' / '.join(f'{a:.3f}' for a in evaluation.get('acceptance_by_depth') or [])}",
    ]
    return lines
