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
    if training:
        lines += ["", "## Training", "", f"- steps: {training.get('steps')}", f"- data: {', '.join(training.get('data', []))}"]
        lines += [f"- rows: {training.get('train_rows')} training, {training.get('held_out_rows')} held out"]
        final, first = training.get("final_eval"), training.get("first_eval")
        if final:
            lines += ["", "Held-out accuracy per head (head k predicts the token k steps after the next):", ""]
            lines += ["| head | top-1 | top-5 | top-1 before training |", "| --- | --- | --- | --- |"]
            for k, (t1, t5) in enumerate(zip(final["top1"], final["top5"])):
                before = f"{first['top1'][k]:.3f}" if first else "n/a"
                lines.append(f"| {k + 1} | {t1:.3f} | {t5:.3f} | {before} |")
    if evaluation:
        lines += ["", "## Decoding", "", f"- acceptance length τ: {evaluation.get('tau')}", f"- speedup: {evaluation.get('speedup')}"]
    return "\n".join(lines) + "\n"
