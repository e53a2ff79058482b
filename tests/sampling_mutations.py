"""Plausible bugs of tree speculative sampling, as source mutations of the real modules: the
distribution tests must fail on each (tests/decoding/test_sampling_power.py, test_sampling.py)."""

from __future__ import annotations

import inspect
import sys
import types

from draftheads.decoding import acceptance, sampling

MUTATIONS = {
    "rejected token not removed from q below the root": (acceptance, "            q[x] = 0\n", "            q[x] = q[x] if node else 0\n"),
    "residual not renormalised": (acceptance, "            p = p / p.sum()\n", ""),
    "bonus drawn from p instead of the residual": (
        acceptance,
        "return Accepted(path, int(torch.multinomial(p, 1,",
        "return Accepted(path, int(torch.multinomial(target_logprobs[node].double().exp(), 1,",
    ),
    "children drawn with replacement": (
        sampling,
        "return torch.topk(logprobs + gumbel_noise(logprobs.shape, generator, logprobs.device), k, dim=-1).indices",
        "return torch.multinomial(logprobs.exp(), k, replacement=True, generator=generator)",
    ),
}


def mutated(module: types.ModuleType, old: str, new: str, name: str):
    """`name` from a copy of `module` whose source has `old` replaced by `new` (old must be there)."""
    source = inspect.getsource(module)
    assert source.count(old) == 1, f"the mutation no longer applies to {module.__name__}: {old!r}"
    copy = types.ModuleType(module.__name__ + "_mutant")
    sys.modules[copy.__name__] = copy  # dataclasses look their module up while the source runs
    try:
        exec(compile(source.replace(old, new), module.__file__, "exec"), copy.__dict__)
    finally:
        del sys.modules[copy.__name__]
    return getattr(copy, name)
