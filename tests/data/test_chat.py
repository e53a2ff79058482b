from __future__ import annotations

import copy
import re

import pytest

from draftheads.data.chat import ChatFormatter
from draftheads.utils.errors import DataError

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4. ✓"},
    {"role": "user", "content": "Show it in Python."},
    {"role": "assistant", "content": "```python\nprint(2 + 2)\n```"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome!"},
]

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA = (
    "{{ '<bos>' }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '### Assistant: ' + m['content'] + '\\n\\n' }}"
    "{% else %}{{ '### ' + m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant: ' }}{% endif %}"
)


def with_template(tokenizer, template: str | None, specials: list[str] = ()):
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(list(specials), special_tokens=True)
    tok.chat_template = template
    return tok


def masked_text(tokenizer, chat) -> str:
    return tokenizer.decode([i for i, m in zip(chat.input_ids, chat.loss_mask) if m], skip_special_tokens=False)


def replies(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def test_chatml_mask_is_exactly_the_replies_and_end_of_turn(demo_tokenizer):
    chat = ChatFormatter(demo_tokenizer).tokenize_with_mask(CONVERSATION)
    assert masked_text(demo_tokenizer, chat) == "".join(r + "<|im_end|>" for r in replies(CONVERSATION))
    # Everything else, including the newline after <|im_end|> and the role headers, is not trained on.
    unmasked = demo_tokenizer.decode([i for i, m in zip(chat.input_ids, chat.loss_mask) if not m], skip_special_tokens=False)
    assert "<|im_start|>assistant\n" in unmasked and "What is 2+2?" in unmasked and "4." not in unmasked


def test_llama3_template_mask(demo_tokenizer):
    tok = with_template(demo_tokenizer, LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    chat = ChatFormatter(tok).tokenize_with_mask(CONVERSATION)
    assert chat.input_ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert masked_text(tok, chat) == "".join(r.strip() + "<|eot_id|>" for r in replies(CONVERSATION))


def test_gemma_template_mask_renames_roles(demo_tokenizer):
    tok = with_template(demo_tokenizer, GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"])
    chat = ChatFormatter(tok).tokenize_with_mask(CONVERSATION[1:])
    assert masked_text(tok, chat) == "".join(r + "<end_of_turn>" for r in replies(CONVERSATION))


def test_template_without_special_end_of_turn_masks_the_text(demo_tokenizer):
    tok = with_template(demo_tokenizer, PLAIN)
    chat = ChatFormatter(tok).tokenize_with_mask(CONVERSATION)
    # Where the tokenizer merges the space after "Assistant:" into a reply's first token, that
    # token carries reply text, so it is trained on; nothing else of the scaffolding is.
    pattern = "".join(" ?" + re.escape(r) for r in replies(CONVERSATION))
    assert re.fullmatch(pattern, masked_text(tok, chat))
    assert masked_text(tok, chat).startswith("4.")  # this tokenizer splits the space from digits


def test_empty_assistant_turn_trains_on_end_of_turn_only(demo_tokenizer):
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]
    chat = ChatFormatter(demo_tokenizer).tokenize_with_mask(messages)
    assert masked_text(demo_tokenizer, chat) == "<|im_end|>"


def test_truncation_cuts_ids_and_mask_together(demo_tokenizer):
    full = ChatFormatter(demo_tokenizer).tokenize_with_mask(CONVERSATION)
    cut = ChatFormatter(demo_tokenizer).tokenize_with_mask(CONVERSATION, max_length=30)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:30] and cut.loss_mask == full.loss_mask[:30]


def test_prompt_ids_end_with_the_generation_header(demo_tokenizer):
    ids = ChatFormatter(demo_tokenizer).prompt_ids(CONVERSATION[:2])
    assert demo_tokenizer.decode(ids).endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_template_override_from_jinja_file(demo_tokenizer, tmp_path):
    (tmp_path / "t.jinja").write_text(PLAIN)
    formatter = ChatFormatter(demo_tokenizer, str(tmp_path / "t.jinja"))
    assert formatter.render(CONVERSATION[1:3]).startswith("### user: What is 2+2?\n### Assistant: 4.")
    with pytest.raises(DataError, match="missing.jinja: chat template file not found"):
        ChatFormatter(demo_tokenizer, str(tmp_path / "missing.jinja"))


def test_tokenizer_without_chat_template_is_refused(demo_tokenizer):
    with pytest.raises(DataError, match="my-model has no chat template: set data.chat_template"):
        ChatFormatter(with_template(demo_tokenizer, None), model_name="my-model")


def test_template_that_is_not_prefix_stable_is_refused(demo_tokenizer):
    unstable = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
        "{% if loop.last %}{{ ' <END>' }}{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    )
    formatter = ChatFormatter(with_template(demo_tokenizer, unstable))
    with pytest.raises(DataError, match="f.json: record 3: the chat template is not prefix-stable"):
        formatter.tokenize_with_mask(CONVERSATION, origin="f.json: record 3")


def test_template_that_rewrites_replies_is_refused(demo_tokenizer):
    # "4. ✓" reads the same upper-cased; message 5 (code) does not.
    upper = "{% for m in messages %}{{ m['role'] + ': ' + (m['content'] | upper) + '\\n' }}{% endfor %}"
    with pytest.raises(DataError, match="rewrites assistant message 5"):
        ChatFormatter(with_template(demo_tokenizer, upper)).tokenize_with_mask(CONVERSATION)


def test_template_raise_exception_names_the_record(demo_tokenizer):
    tok = with_template(demo_tokenizer, GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"])
    with pytest.raises(DataError, match="x.jsonl: line 4: the chat template cannot render this conversation: System role not supported"):
        ChatFormatter(tok).tokenize_with_mask(CONVERSATION, origin="x.jsonl: line 4")


def test_demo_mt_bench_prompts_render_as_chat_prompts(demo_tokenizer):
    from draftheads.data.config import SourceConfig
    from draftheads.data.sources import read_source

    convs, _ = read_source(SourceConfig(path="demo:mt-bench"), require_assistant=False, skip_invalid=False)
    formatter = ChatFormatter(demo_tokenizer)
    for conv in convs:
        text = demo_tokenizer.decode(formatter.prompt_ids(conv.messages[:1]))
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and conv.messages[0]["content"] in text
