"""The lookup baselines at their best: a sweep on other prompts, the fastest setting chosen."""

from __future__ import annotations

import pytest

from draftheads.decoding.engine import default_eos
from draftheads.eval.baselines import HF_GRID, OUR_GRID, lookup_methods, tune_baselines
from draftheads.decoding.sampling import SamplingConfig
from draftheads.eval.config import BaselineSettings, EvalConfig
from draftheads.models.backbone import BackboneConfig, load_backbone
from helpers import write_jsonl


@pytest.fixture(scope="module")
def base(varied_base):
    return load_backbone(BackboneConfig(base=str(varied_base)))


@pytest.fixture
def tune_prompts(tmp_path):
    return str(
        write_jsonl(
            tmp_path / "tune.jsonl", [{"prompt": "Repeat after me: the red boat sails home."}, {"prompt": "Count from one to ten."}]
        )
    )


def test_each_lookup_baseline_gets_the_fastest_setting_of_its_sweep(base, tune_prompts):
    config = EvalConfig(heads="h", max_new_tokens=8, baselines=BaselineSettings(tune_prompts=tune_prompts, tune_limit=2))
    chosen = tune_baselines(config, base, default_eos(base), progress=False)
    for name, grid in (("prompt_lookup", HF_GRID), ("lookup", OUR_GRID)):
        sweep = chosen[name]["sweep"]
        assert [(row["tokens"], row["ngram"]) for row in sweep] == sorted(grid) and all(row["tokens_per_s"] > 0 for row in sweep)
        best = max(sweep, key=lambda row: row["tokens_per_s"])
        assert (chosen[name]["tokens"], chosen[name]["ngram"]) == (best["tokens"], best["ngram"])
        assert chosen[name]["chosen"] == f"fastest of 9 on 2 prompts of {tune_prompts}"
    hf, ours = lookup_methods(base, default_eos(base), chosen)
    assert (hf.name, ours.name) == ("prompt_lookup", "lookup")


def test_a_fixed_setting_is_kept_and_sampling_has_no_lookup_alone(base, tune_prompts):
    fixed = BaselineSettings(prompt_lookup_tokens=10, tune_prompts=tune_prompts, tune_limit=2, lookup_tokens=8, lookup_ngram=2)
    sampled = EvalConfig(heads="h", max_new_tokens=4, baselines=fixed, sampling=SamplingConfig(temperature=0.7))
    chosen = tune_baselines(sampled, base, default_eos(base), progress=False)
    assert set(chosen) == {"prompt_lookup"}  # copies have no draft distribution to sample against
    assert [(row["tokens"], row["ngram"]) for row in chosen["prompt_lookup"]["sweep"]] == [(10, 1), (10, 2), (10, 3)]
    every = BaselineSettings(10, 2, 8, 2)
    assert tune_baselines(EvalConfig(heads="h", baselines=every), base, default_eos(base), progress=False) == {
        "prompt_lookup": {"tokens": 10, "ngram": 2, "chosen": "as configured"},
        "lookup": {"tokens": 8, "ngram": 2, "chosen": "as configured"},
    }


def test_the_baselines_are_never_tuned_on_the_evals_own_prompts():
    with pytest.raises(ValueError, match="the eval's own prompts"):
        EvalConfig(heads="h", prompts="sharegpt", baselines=BaselineSettings(tune_prompts="sharegpt"))
    EvalConfig(heads="h", prompts="sharegpt", baselines=BaselineSettings(10, 2, 8, 2, tune_prompts="sharegpt"))  # nothing to tune
    with pytest.raises(ValueError, match="at least 1"):
        BaselineSettings(prompt_lookup_tokens=0)
