"""Greedy decoding is lossless on real text: the demo model (SmolLM2-135M-Instruct, whose answers
vary from prompt to prompt and end with its own EOS) through the eval's runner, multi-turn, our
autoregressive and tree decoding against HF `generate` token for token; and stop strings as HF
`generate` applies them. The drafts come from `ScriptedHeads` (right to a depth that changes every
step), so accepted paths of every length occur, with an EOS or a stop string inside them."""

from __future__ import annotations

import pytest
import torch

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.lookup import lookup_continuation
from draftheads.decoding.sampling import SamplingConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.decoding.verify import TokenCheck
from draftheads.decoding.planning.walks import AnswerWalk, lookup_copies, replay
from draftheads.eval.prompts import EvalPrompt
from draftheads.eval.runner import Method, Runner, engine_method, hf_method
from draftheads.models.backbone import BackboneConfig, load_backbone
from oracle_heads import ScriptedHeads

PROMPTS = [
    EvalPrompt("sky", "short", ["Answer with one word: what colour is a clear daytime sky?", "And a ripe banana?"]),
    EvalPrompt("autumn", "writing", ["Write two short sentences about autumn.", "Now write one about winter."]),
]
MAX_NEW = 40


@pytest.fixture(scope="module")
def demo():
    return load_backbone(BackboneConfig(base="demo:smollm2-135m", dtype="float32"))


def recording(method: Method, heads: ScriptedHeads) -> Method:
    """`method`, telling `heads` each of its continuations (prompt + answer) as it makes them."""

    def run(prompt_ids, config):
        tokens, result = method.run(prompt_ids, config)
        heads.references.append(list(prompt_ids) + tokens)
        return tokens, result

    return Method(method.name, run, method.backbone)


def assert_every_token_verified(record: dict, name: str) -> None:
    """Every token `name` emitted, every turn, re-scored by the model: each its greedy choice."""
    check = TokenCheck.from_json(record["verify"][name]["float32"])
    assert check.tokens == sum(len(t["tokens"]) for t in record["methods"][name])
    assert check.mismatches(1e-3) == 0, check.gaps


def test_our_greedy_decoding_equals_hf_generate_on_real_multi_turn_text(demo):
    eos = Engine(demo).default_eos()
    heads = ScriptedHeads(demo, num_heads=4)
    tree = Engine(demo, heads, TreeSpec("dynamic", budget=8, width=2))
    methods = [
        recording(hf_method("hf_generate", demo, eos, None), heads),
        engine_method("ours_ar", Engine(demo)),
        engine_method("ours_tree", tree),
    ]
    runner = Runner(methods, ChatFormatter(demo.tokenizer), GenerationConfig(max_new_tokens=MAX_NEW, eos_token_ids=eos), 1e-3, verify=True)
    records = [runner.run_prompt(prompt, index, 0) for index, prompt in enumerate(PROMPTS)]
    answers = []
    for record in records:
        reference = record["methods"]["hf_generate"]
        for name in ("ours_ar", "ours_tree"):
            assert [t["tokens"] for t in record["methods"][name]] == [t["tokens"] for t in reference], (record["id"], name)
            # ... and from the same prompts: the second turn's prompt holds each method's own first answer
            assert [t["prompt_ids"] for t in record["methods"][name]] == [t["prompt_ids"] for t in reference]
            assert_every_token_verified(record, name)
        answers += [t["tokens"] for t in reference]
    # Real text that varies: four different answers, some ended by the model's EOS, some by the limit.
    assert len({tuple(a) for a in answers}) == 4 and all(len(set(a)) > 3 for a in answers)
    ended = [a[-1] in eos for a in answers]
    assert any(ended) and not all(ended), [demo.tokenizer.decode(a) for a in answers]
    tree_turns = [turn for record in records for turn in record["methods"]["ours_tree"]]
    assert {0, 1, 2, 3, 4} <= {n for turn in tree_turns for n in turn["accepted"]}  # every acceptance length, the full path included
    # τ counts emitted tokens: every step's count plus one sums, with the prompt's forward's first
    # token, to the answer, also where an EOS inside an accepted path or the limit ended it.
    assert all(len(t["tokens"]) == 1 + sum(t["accepted"]) + len(t["accepted"]) for t in tree_turns), \
        [(len(t["tokens"]), t["accepted"]) for t in tree_turns]


def test_stop_strings_end_where_hf_generate_ends(demo):
    prompt = ChatFormatter(demo.tokenizer).prompt_ids([{"role": "user", "content": PROMPTS[1].turns[0]}])
    ids = torch.tensor([prompt])

    def hf(stop: list[str] | None) -> list[int]:
        out = demo.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None,
                                  pad_token_id=0, stop_strings=stop, tokenizer=demo.tokenizer)
        return out[0, len(prompt) :].tolist()

    full = hf(None)
    text = demo.tokenizer.decode(full)
    # Stop strings that end inside the answer: a word of it, and a piece spanning a token boundary
    # (the last two characters of one token and the first two of the next).
    words = text.split()
    pieces = [demo.tokenizer.decode([t]) for t in full]
    k = next(i for i in range(len(full) // 3, len(full) - 1) if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2)
    stops = [words[len(words) // 2], pieces[k][-2:] + pieces[k + 1][:2]]
    heads = ScriptedHeads(demo, num_heads=4)
    heads.references.append(prompt + full)
    for stop in stops:
        expected = hf([stop])
        assert len(expected) < len(full) and stop in demo.tokenizer.decode(expected), stop
        config = GenerationConfig(max_new_tokens=MAX_NEW, eos_token_ids=(), stop_strings=(stop,))
        for engine in (Engine(demo), Engine(demo, heads, TreeSpec("dynamic", budget=8, width=2))):
            result = engine.generate(prompt, config)
            assert result.tokens == expected and result.finish_reason == "stop_string", stop


def test_a_lookup_branch_keeps_greedy_decoding_exact_and_accepts_copied_runs(demo):
    """Prompt lookup as a branch of the tree (alone, and beside scripted heads): the second turn asks
    for the first answer again, so copied runs longer than any head drafts are accepted, and copies
    that go wrong are cut where the model disagrees."""
    eos = Engine(demo).default_eos()
    heads = ScriptedHeads(demo, num_heads=4)
    methods = [
        recording(hf_method("hf_generate", demo, eos, None), heads),
        engine_method("lookup", Engine(demo, tree=TreeSpec("none", lookup=8))),
        engine_method("tree_lookup", Engine(demo, heads, TreeSpec("dynamic", budget=6, width=2, lookup=8))),
    ]
    prompt = EvalPrompt("again", "copy", [PROMPTS[1].turns[0], "Repeat your previous answer exactly, word for word."])
    runner = Runner(methods, ChatFormatter(demo.tokenizer), GenerationConfig(max_new_tokens=MAX_NEW, eos_token_ids=eos), 1e-3, verify=True)
    record = runner.run_prompt(prompt, 0, 0)
    reference = record["methods"]["hf_generate"]
    for name in ("lookup", "tree_lookup"):
        assert [t["tokens"] for t in record["methods"][name]] == [t["tokens"] for t in reference], name
        assert_every_token_verified(record, name)
        accepted = [a for t in record["methods"][name] for a in t["accepted"]]
        assert max(accepted) > 4, (name, accepted)  # deeper than the heads draft: a copied run
        assert 0 in accepted, (name, accepted)  # and steps where nothing (or a wrong copy) was accepted
    with pytest.raises(ValueError, match="lookup branch"):
        Engine(demo, tree=TreeSpec("none", lookup=8)).generate(
            [1, 2, 3], GenerationConfig(max_new_tokens=4, sampling=SamplingConfig(temperature=1.0))
        )


def test_lookup_decoding_accepts_exactly_what_the_copied_tokens_get_right(demo):
    """Prompt lookup on the engine, step by step: every step's accepted count is the longest prefix
    of `lookup_continuation(prompt + tokens so far)` that greedy decoding produces next, replayed
    from HF `generate`'s own continuation. An answer that repeats itself makes long copies; a
    varied one makes short, often wrong ones from n-grams of every length."""
    lookup, new = 10, 32
    accepted = {}
    for text in ("Repeat this sentence four times: the small red boat sails home at dusk.", PROMPTS[1].turns[0]):
        prompt = ChatFormatter(demo.tokenizer).prompt_ids([{"role": "user", "content": text}])
        ids = torch.tensor([prompt])
        # HF's continuation past our limit: the copies of the last steps are checked against it too
        reference = demo.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new + lookup + 1, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)[0, len(prompt) :].tolist()
        result = Engine(demo, tree=TreeSpec("none", lookup=lookup, lookup_ngram=3)).generate(
            prompt, GenerationConfig(max_new_tokens=new, eos_token_ids=())
        )
        assert result.tokens == reference[:new]
        expected, emitted = [], 1  # the first token comes from the prompt's forward
        while emitted < new:
            chain = lookup_continuation(prompt + reference[:emitted], lookup, 3)
            right = next((i for i, token in enumerate(chain) if token != reference[emitted + i]), len(chain))
            expected.append(min(right, new - emitted - 1))  # τ counts emitted tokens: none past the limit
            emitted += expected[-1] + 1
        assert result.accepted == expected, text
        accepted[text] = expected
        # The calibration replay (decoding/planning/walks.py) makes the same steps from the answer alone.
        copies, proposed = lookup_copies(prompt + reference, len(prompt), 3)
        walk = AnswerWalk(0, [[10]] * len(reference), copies, new, proposed)
        steps = replay([walk], set(), lookup, 1, new)
        assert steps.accepted == expected, text
        assert steps.copied == result.tree_sizes, text  # and verifies as many copied nodes each step
        # The cache holds a whole copied branch even when few tokens are left to make.
        short = Engine(demo, tree=TreeSpec("none", lookup=lookup)).generate(prompt, GenerationConfig(max_new_tokens=2, eos_token_ids=()))
        assert short.tokens == reference[:2]
    repeating, varied = accepted.values()
    assert max(repeating) >= 8 and 0 in repeating  # long copies, and copies (or no match) the model rejects
    assert max(varied) < max(repeating)
