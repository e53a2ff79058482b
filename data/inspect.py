"""`draftheads data inspect`: show what training will see: one row with its loss mask, and statistics."""

from __future__ import annotations

from draftheads.data.dataset import Row, build_datasets
from draftheads.models.backbone import load_tokenizer, resolve_location, tokenizer_fingerprint
from draftheads.utils.errors import ConfigError

_GREEN = "\x1b[30;42m"
_RESET = "\x1b[0m"


def render_masked(tokenizer, row: Row, color: bool, max_chars: int | None = None) -> str:
    """The row's text with trained-on spans marked: green when `color`, else between ⟦ and ⟧.

    Packed rows show a line where each new document begins.
    """
    pieces = []
    start = 0
    ids, mask = row.input_ids, row.loss_mask
    for t in range(1, len(ids) + 1):
        boundary = row.position_ids is not None and t < len(ids) and row.position_ids[t] == 0
        if t == len(ids) or mask[t] != mask[start] or boundary:
            text = tokenizer.decode(ids[start:t], skip_special_tokens=False)
            if mask[start]:
                text = f"{_GREEN}{text}{_RESET}" if color else f"⟦{text}⟧"
            pieces.append(text)
            if boundary:
                pieces.append("\n──── next packed document ────\n")
            start = t
    out = "".join(pieces)
    if max_chars is not None and len(out) > max_chars:
        out = out[:max_chars] + f"\n… ({len(out) - max_chars} more characters; --max-chars to see more)"
    return out


def token_table(tokenizer, row: Row) -> str:
    """One line per token: position, id, mask, and the token's text."""
    lines = ["  pos      id  loss  token"]
    for t, (tid, m) in enumerate(zip(row.input_ids, row.loss_mask)):
        lines.append(f"{t:5d} {tid:7d}  {'  1 ' if m else '  . '}  {tokenizer.convert_ids_to_tokens(tid)!r}")
    return "\n".join(lines)


def inspect_data(
    recipe, show: int = 1, tokens: bool = False, color: bool = False, max_chars: int | None = 4000, progress: bool = True
) -> str:
    """Build the recipe's dataset and return a report: sources, one masked row, statistics.
    `recipe` is a `train.config.Recipe` (only its model and data sections are read)."""
    location = resolve_location(recipe.model.base, recipe.model.revision)
    tokenizer = load_tokenizer(recipe.model.base, recipe.model.revision, location)
    dataset, _, stats, _ = build_datasets(recipe.data, tokenizer, recipe.model.base, progress=progress)
    if not 1 <= show <= len(dataset):
        raise ConfigError(f"--show {show}: the dataset has rows 1..{len(dataset)}")
    row = dataset[show - 1]
    legend = "green" if color else "between ⟦ ⟧"
    trained = sum(row.loss_mask)
    out = [
        f"base model: {recipe.model.base} = {location.origin}",
        f"tokenizer: {type(tokenizer).__name__}, vocab {len(tokenizer)}, fingerprint {tokenizer_fingerprint(tokenizer)}",
        "",
        f"training row {show} of {len(dataset)}: {len(row.input_ids)} tokens, {trained} trained on ({legend})",
        "─" * 72,
        render_masked(tokenizer, row, color, max_chars),
        "─" * 72,
    ]
    if tokens:
        out += [token_table(tokenizer, row), "─" * 72]
    out += ["statistics:"] + [f"  {line}" for line in stats.lines()]
    return "\n".join(out)
