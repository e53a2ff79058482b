"""Render conversations with the tokenizer's chat template and mask everything but the assistant.

The mask is derived from the template itself, not from hard-coded separators, so it works for
ChatML, Llama-3, Gemma, Mistral and any template that renders earlier turns the same way whether or
not later turns follow ("prefix-stable"). For each assistant turn:

1. render the conversation up to that turn with the generation prompt: the assistant text starts
   after it;
2. render it through that turn, with the turn's text replaced by a sentinel: what the template puts
   before and after the text (scaffolding, end-of-turn marker) is then known exactly;
3. the loss covers the text and the suffix up to and including its first special token (the
   end-of-turn token the model must learn to emit); newlines and headers after it are scaffolding.

Characters are mapped to tokens through the fast tokenizer's offsets: a token is trained on when it
overlaps an assistant span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from draftheads.utils.errors import DataError

_SENTINEL = "DRAFTHEADSSENTINELTEXT"


@dataclass
class MaskedChat:
    """A tokenised conversation and its assistant-only loss mask."""

    input_ids: list[int]
    loss_mask: list[int]
    """1 where the token is assistant text or its end-of-turn token; 0 elsewhere."""
    text: str
    """The rendered conversation."""
    truncated: bool = False
    """True when the conversation was cut to `max_length` tokens."""


class ChatFormatter:
    """Renders and tokenises conversations with one tokenizer and one chat template."""

    def __init__(self, tokenizer, chat_template: str | None = None, model_name: str = "the tokenizer"):
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"{model_name}: loss masks need a fast tokenizer (with character offsets)")
        if chat_template is not None and Path(chat_template).suffix == ".jinja":
            path = Path(chat_template).expanduser()
            if not path.is_file():
                raise DataError(f"{chat_template}: chat template file not found")
            chat_template = path.read_text(encoding="utf-8")
        self.template = chat_template or tokenizer.chat_template
        if not self.template:
            raise DataError(
                f"{model_name} has no chat template: set data.chat_template to a Jinja template "
                "(inline, or a path to a .jinja file)"
            )
        self.tokenizer = tokenizer
        specials = set(tokenizer.all_special_tokens)
        specials.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
        # Longest first, so that of two specials starting at one place the longer wins.
        self._specials = sorted((s for s in specials if s), key=len, reverse=True)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False, origin: str = "") -> str:
        """The conversation as text, exactly as the template renders it."""
        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors, including the template's own raise_exception()
            where = f"{origin}: " if origin else ""
            raise DataError(f"{where}the chat template cannot render this conversation: {exc}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (the template already holds BOS and other specials)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]], origin: str = "") -> list[int]:
        """Token ids of a prompt ending with the assistant generation header."""
        return self.encode(self.render(messages, add_generation_prompt=True, origin=origin))

    def assistant_spans(self, messages: list[dict[str, str]], origin: str = "") -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans the loss covers, one per assistant turn."""
        full = self.render(messages, origin=origin)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            spans.append(self._assistant_span(messages, i, full, origin))
        return full, spans

    def _assistant_span(self, messages: list[dict[str, str]], i: int, full: str, origin: str) -> tuple[int, int]:
        where = f"{origin}: " if origin else ""
        through = self.render(messages[: i + 1], origin=origin)
        if not full.startswith(through):
            raise DataError(
                f"{where}the chat template is not prefix-stable: the conversation through message {i + 1} "
                "renders differently once later messages follow, so assistant tokens cannot be located"
            )
        start = self._turn_start(messages[:i], through, origin)
        probe_messages = messages[:i] + [{**messages[i], "content": _SENTINEL}]
        probe = self.render(probe_messages, origin=origin)
        at = probe.find(_SENTINEL, start)
        if not probe.startswith(through[:start]) or at < 0:
            raise DataError(f"{where}the chat template does not place assistant message {i + 1} verbatim")
        before = probe[start:at]
        after = probe[at + len(_SENTINEL) :]
        text_start = start + len(before)
        text_end = len(through) - len(after)
        content = messages[i]["content"]
        if text_end < text_start or through[text_start:text_end].strip() != content.strip():
            raise DataError(
                f"{where}the chat template rewrites assistant message {i + 1}, so its tokens cannot be located"
            )
        return text_start, text_end + self._end_of_turn_length(after)

    def _turn_start(self, earlier: list[dict[str, str]], through: str, origin: str) -> int:
        """Where the assistant turn's own text region begins: after the generation prompt."""
        for add_generation_prompt in (True, False):
            prefix = self.render(earlier, add_generation_prompt=add_generation_prompt, origin=origin) if earlier else ""
            if through.startswith(prefix):
                return len(prefix)
        where = f"{origin}: " if origin else ""
        raise DataError(f"{where}the chat template renders earlier turns differently once an assistant turn follows")

    def _end_of_turn_length(self, suffix: str) -> int:
        """Characters of `suffix` the model must learn to emit: through its first special token."""
        best = None
        for special in self._specials:
            at = suffix.find(special)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(special))
        if best is not None:
            return best[1]
        # No special token closes the turn: train on the template's literal closing text.
        return len(suffix.rstrip())

    def tokenize_with_mask(self, messages: list[dict[str, str]], max_length: int | None = None, origin: str = "") -> MaskedChat:
        """Tokenise a conversation and mark the tokens the loss covers (see module docstring)."""
        text, spans = self.assistant_spans(messages, origin)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        mask = [0] * len(ids)
        span_index = 0
        for t, (begin, end) in enumerate(encoded["offset_mapping"]):
            while span_index < len(spans) and begin >= spans[span_index][1]:
                span_index += 1
            # Overlap, not containment: a token merging scaffolding with the reply's first
            # characters (" Hello" after "Assistant:") carries assistant text the model must emit.
            if span_index < len(spans) and begin < spans[span_index][1] and end > spans[span_index][0]:
                mask[t] = 1
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids, mask = ids[:max_length], mask[:max_length]
        return MaskedChat(input_ids=ids, loss_mask=mask, text=text, truncated=truncated)
