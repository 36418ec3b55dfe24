"""SamplingParams validation and the batched Sampler: greedy, top-k/top-p, distribution, seeds,
logprobs and min_tokens.

Statistical tests use a fixed seed, so they are deterministic; their tolerance is a chi-square
test at significance 1e-3 (critical values hard-coded below), i.e. a correct sampler would fail
with probability 1e-3 for a *random* seed, and a wrong one (e.g. forgetting the temperature or
the top-p renormalization) fails by orders of magnitude.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.engine.sampling import (
    SAMPLING_EPS,
    Sampler,
    SamplingParams,
    SamplingType,
    apply_min_tokens,
    apply_top_k_top_p,
)

# Chi-square critical values at alpha = 1e-3, by degrees of freedom (scipy.stats.chi2.ppf).
CHI2_CRIT_1E3 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the support of ``probs``, and its degrees of freedom.

    Asserts first that nothing outside the support was ever drawn.
    """
    support = probs > 0
    assert counts[~support].sum() == 0, f"sampled outside the support: {counts}"
    n = counts.sum()
    expected = n * probs[support]
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    return stat, int(support.sum()) - 1


def reference_probs(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """float64 softmax(logits / T), restricted to the top-k then the top-p nucleus.

    Only for logits without ties near either cut (the tests choose such logits).
    """
    x = np.asarray(logits, dtype=np.float64) / temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    if top_k > 0:
        probs[order[top_k:]] = 0.0
        probs /= probs.sum()
    if top_p < 1.0:
        mass_before = np.cumsum(probs[order]) - probs[order]
        probs[order[mass_before >= top_p]] = 0.0
        probs /= probs.sum()
    return probs


# -- SamplingParams --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("temperature", {"temperature": -0.5}),
        ("temperature", {"temperature": float("nan")}),
        ("temperature", {"temperature": float("inf")}),
        ("temperature", {"temperature": "1.0"}),
        ("top_p", {"top_p": 0.0}),
        ("top_p", {"top_p": 1.5}),
        ("top_p", {"top_p": float("nan")}),
        ("top_k", {"top_k": -2}),
        ("top_k", {"top_k": 2.5}),
        ("max_tokens", {"max_tokens": 0}),
        ("max_tokens", {"max_tokens": 4.0}),
        ("min_tokens", {"min_tokens": -1}),
        ("min_tokens", {"min_tokens": 17, "max_tokens": 16}),
        ("logprobs", {"logprobs": -1}),
        ("logprobs", {"logprobs": True}),
        ("stop_token_ids", {"stop_token_ids": ["2"]}),
        ("stop_token_ids", {"stop_token_ids": [1, 2.0]}),
        ("stop_token_ids", {"stop_token_ids": [True]}),
        ("stop_token_ids", {"stop_token_ids": [-3]}),
        ("stop_token_ids", {"stop_token_ids": "12"}),
        ("stop_token_ids", {"stop_token_ids": 7}),
        ("seed", {"seed": -1}),
        ("seed", {"seed": 1.5}),
        ("seed", {"seed": 2**64}),
        ("ignore_eos", {"ignore_eos": "yes"}),
    ],
)
def test_validation_error_names_the_field_and_value(field, kwargs):
    with pytest.raises(ValueError, match=field) as info:
        SamplingParams(**kwargs)
    assert repr(kwargs[field])[:6] in str(info.value)


def test_valid_params_are_normalized_and_frozen():
    sp = SamplingParams(top_k=-1, stop_token_ids=[5, 3, 5])
    assert sp.top_k == 0  # -1 is the old spelling of "disabled"
    assert sp.stop_token_ids == (5, 3)  # a tuple, deduplicated, order kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.temperature = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(sp, top_p=2.0)  # replace validates again
    defaults = SamplingParams()
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.max_tokens) == (
        1.0,
        1.0,
        0,
        16,
    )
    assert defaults.logprobs is None and defaults.seed is None and defaults.min_tokens == 0
    SamplingParams(min_tokens=16, max_tokens=16, logprobs=0, seed=2**64 - 1)  # edges are valid


def test_sampling_type_and_greedy_normalization():
    assert SamplingParams().sampling_type is SamplingType.RANDOM
    assert SamplingParams(seed=3).sampling_type is SamplingType.RANDOM_SEED
    greedy = SamplingParams(temperature=0.0, top_k=5, top_p=0.3, seed=3)
    assert greedy.sampling_type is SamplingType.GREEDY and greedy.is_greedy
    assert (greedy.top_k, greedy.top_p) == (0, 1.0)  # ignored, as in vLLM
    assert SamplingParams(temperature=SAMPLING_EPS / 2).is_greedy
    assert not SamplingParams(temperature=SAMPLING_EPS * 2).is_greedy


def test_all_stop_token_ids_and_generator():
    sp = SamplingParams(stop_token_ids=[7, 8])
    assert sp.all_stop_token_ids(2) == {2, 7, 8}
    assert sp.all_stop_token_ids([2, 3]) == {2, 3, 7, 8}
    assert sp.all_stop_token_ids(None) == {7, 8}
    assert dataclasses.replace(sp, ignore_eos=True).all_stop_token_ids(2) == {7, 8}
    assert sp.new_generator() is None
    g1, g2 = SamplingParams(seed=9).new_generator(), SamplingParams(seed=9).new_generator()
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


# -- greedy ----------------------------------------------------------------------------------


def test_greedy_is_argmax_and_ignores_top_k_top_p():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(0)) * 4
    sampler = Sampler(seed=0)
    variants = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, top_k=3, top_p=0.01),
        SamplingParams(temperature=SAMPLING_EPS / 10, top_k=1, seed=4),
    ]
    for sp in variants:
        out = sampler.sample(logits, [sp] * 8, [sp.new_generator() for _ in range(8)])
        assert out.sampled_token_ids.dtype == torch.long
        assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_greedy_rows_in_a_mixed_batch_are_argmax():
    logits = torch.randn(10, 64, generator=torch.Generator().manual_seed(1)) * 3
    params = [
        SamplingParams(temperature=0.0) if i % 2 else SamplingParams(temperature=2.0, top_p=0.9)
        for i in range(10)
    ]
    out = Sampler(seed=0)(logits, params).sampled_token_ids
    assert torch.equal(out[1::2], logits[1::2].argmax(dim=-1))


def test_greedy_ties_go_to_the_lowest_id():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0]])
    assert Sampler()(logits, [SamplingParams(temperature=0.0)]).sampled_token_ids.item() == 1


def test_top_k_1_equals_greedy():
    gen = torch.Generator().manual_seed(2)
    sampler = Sampler(seed=5)
    for _ in range(5):
        logits = torch.randn(16, 500, generator=gen)  # continuous: no ties at the top
        for temperature in (0.3, 1.0, 1.9):
            params = [SamplingParams(temperature=temperature, top_k=1)] * 16
            out = sampler(logits, params).sampled_token_ids
            assert torch.equal(out, logits.argmax(dim=-1))


def test_tiny_top_p_equals_greedy():
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=1.5, top_p=1e-6)] * 16
    assert torch.equal(Sampler(seed=1)(logits, params).sampled_token_ids, logits.argmax(-1))


# -- top-k / top-p properties ----------------------------------------------------------------

# Coarse values make exact ties likely (as bf16 logits upcast to fp32 do); fine values do not.
logit_values = st.one_of(
    st.floats(-12.0, 12.0, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 2.5, 6.0]),
)
logit_rows = st.lists(logit_values, min_size=2, max_size=40)


def nucleus_bounds(probs: np.ndarray, top_p: float, tol: float = 1e-5):
    """Tokens top-p must keep and tokens it must drop, robust to ties and fp32 rounding.

    A token's mass-before lies between the mass of strictly likelier tokens and the mass of
    all other tokens at least as likely (where it sits among its ties is the sort's choice).
    """
    must_keep, must_drop = set(), set()
    for j, pj in enumerate(probs):
        if pj == 0:
            continue
        strictly = probs[probs > pj].sum()
        at_least = probs[probs >= pj].sum() - pj
        if at_least < top_p - tol:
            must_keep.add(j)
        if strictly >= top_p + tol:
            must_drop.add(j)
    if (probs == probs.max()).sum() == 1:  # a unique top token is always kept; among exact
        must_keep.add(int(np.argmax(probs)))  # ties the logits decide (checked by the caller)
    return must_keep, must_drop


@settings(max_examples=100, deadline=None)
@given(row=logit_rows, data=st.data())
def test_top_k_keeps_exactly_the_values_at_or_above_the_kth(row, data):
    k = data.draw(st.integers(1, len(row)))
    logits = torch.tensor([row], dtype=torch.float32)
    kth = sorted(row, reverse=True)[k - 1]
    kept_ref = {j for j, v in enumerate(row) if v >= kth}
    k_t = torch.tensor([k])
    for p in (None, torch.tensor([1.0])):  # topk-only path and the sort path agree
        out = apply_top_k_top_p(logits.clone(), k_t, p)[0]
        assert {j for j in range(len(row)) if out[j] > -math.inf} == kept_ref
        assert torch.equal(out[out > -math.inf], logits[0][out > -math.inf])  # values untouched
    # Sampling never leaves the top k, at any temperature.
    temperature = data.draw(st.floats(0.05, 4.0))
    scaled = logits / torch.tensor(temperature, dtype=torch.float32)
    kth_scaled = scaled[0].sort(descending=True).values[k - 1]
    sp = SamplingParams(temperature=temperature, top_k=k)
    out = Sampler(seed=data.draw(st.integers(0, 2**32))).sample(logits.expand(32, -1), [sp] * 32)
    assert (scaled[0][out.sampled_token_ids] >= kth_scaled).all()


@settings(max_examples=100, deadline=None)
@given(row=logit_rows, data=st.data())
def test_top_p_keeps_the_nucleus_and_the_top_token(row, data):
    top_p = data.draw(st.floats(1e-3, 1.0, exclude_max=True))
    top_k = data.draw(st.integers(0, len(row)))
    logits = torch.tensor([row], dtype=torch.float32)
    out = apply_top_k_top_p(logits.clone(), torch.tensor([top_k]), torch.tensor([top_p]))[0]
    kept = {j for j in range(len(row)) if out[j] > -math.inf}
    # Reference on the top-k survivors (themselves exact: see the top-k test).
    probs = np.exp(np.asarray(row, dtype=np.float64) - max(row))
    if top_k > 0:
        probs[np.asarray(row) < sorted(row, reverse=True)[top_k - 1]] = 0.0
    probs /= probs.sum()
    must_keep, must_drop = nucleus_bounds(probs, top_p)
    assert must_keep <= kept
    assert not (must_drop & kept)
    assert int(logits.argmax()) in kept
    # Sampling only draws kept tokens.
    temperature = data.draw(st.floats(0.05, 4.0))
    sp = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    scaled = (logits / torch.tensor(temperature, dtype=torch.float32)).expand(32, -1)
    kept_scaled = apply_top_k_top_p(
        scaled.clone(), torch.full((32,), top_k), torch.full((32,), top_p)
    )
    sampled = Sampler(seed=data.draw(st.integers(0, 2**32))).sample(
        logits.expand(32, -1), [sp] * 32
    )
    assert (kept_scaled[0][sampled.sampled_token_ids] > -math.inf).all()


def test_top_p_one_keeps_every_token():
    # fp32 softmax outputs can sum to a little over 1, so comparing a cumulative mass with
    # p == 1 would clip the tail token of about 2/3 of these rows: p == 1 must be a no-op.
    logits = torch.randn(64, 20, generator=torch.Generator().manual_seed(5)) * 3
    logits[:, -1] = -30.0
    p = torch.ones(64)
    p[0] = 0.5  # a neighbour that does use top-p
    out = apply_top_k_top_p(logits.clone(), None, p)
    assert torch.equal(out[1:], logits[1:])


def test_filters_are_per_row():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 3)
    k = torch.tensor([1, 0, 3])
    p = torch.tensor([1.0, 0.5, 1.0])
    out = apply_top_k_top_p(logits.clone(), k, p)
    kept = (out > -math.inf).tolist()
    assert kept[0] == [True, False, False, False]  # top-1
    assert kept[1] == [True, False, False, False]  # softmax top token has mass 0.64 >= 0.5
    assert kept[2] == [True, True, True, False]  # top-3


# -- the sampled distribution ----------------------------------------------------------------

LOGITS6 = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "support"),
    [(0.7, 0, 1.0, 6), (1.0, 4, 0.8, 3), (1.6, 0, 0.9, 5), (0.5, 2, 1.0, 2)],
)
def test_frequencies_match_the_filtered_softmax(temperature, top_k, top_p, support):
    n = 20_000
    probs = reference_probs(LOGITS6, temperature, top_k, top_p)
    assert (probs > 0).sum() == support  # the case really exercises the filter it names
    logits = torch.tensor([LOGITS6]).expand(n, -1)
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    out = Sampler(seed=1234)(logits, [sp] * n).sampled_token_ids
    counts = np.bincount(out.numpy(), minlength=len(LOGITS6))
    stat, dof = chi_square(counts, probs)
    assert stat < CHI2_CRIT_1E3[dof], (counts, probs)


def test_frequencies_of_one_seeded_request_over_many_steps():
    # The per-request generator path: one row, its own generator advanced step after step.
    steps = 3000
    sp = SamplingParams(temperature=0.8, seed=77)
    gen = sp.new_generator()
    sampler = Sampler(seed=0)
    logits = torch.tensor([LOGITS6])
    tokens = [sampler(logits, [sp], [gen]).sampled_token_ids.item() for _ in range(steps)]
    counts = np.bincount(tokens, minlength=len(LOGITS6))
    stat, dof = chi_square(counts, reference_probs(LOGITS6, 0.8))
    assert stat < CHI2_CRIT_1E3[dof], counts


# -- reproducibility -------------------------------------------------------------------------

VOCAB = 257  # odd on purpose: rows start at every alignment in a flattened batch


def request_logits(rid: int, step: int) -> torch.Tensor:
    """A request's logits at a step: a fixed function of (request, step), as a model gives."""
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(1000 * rid + step)) * 2


def run(batch: list[tuple[int, SamplingParams]], steps: int, engine_seed: int):
    """Sample ``steps`` tokens for each (request id, params); returns tokens per request id."""
    sampler = Sampler(seed=engine_seed)
    gens = [sp.new_generator() for _, sp in batch]
    tokens: dict[int, list[int]] = {rid: [] for rid, _ in batch}
    for step in range(steps):
        logits = torch.stack([request_logits(rid, step) for rid, _ in batch])
        out = sampler(logits, [sp for _, sp in batch], gens).sampled_token_ids.tolist()
        for (rid, _), tok in zip(batch, out, strict=True):
            tokens[rid].append(tok)
    return tokens


def test_seeded_requests_ignore_batch_composition_and_order():
    targets = [
        (1, SamplingParams(temperature=1.0, seed=42)),
        (2, SamplingParams(temperature=0.8, top_p=0.9, seed=42)),
        (3, SamplingParams(temperature=1.3, top_k=20, seed=7)),
    ]
    others = [
        (10, SamplingParams(temperature=1.0)),
        (11, SamplingParams(temperature=0.0)),
        (12, SamplingParams(temperature=0.5, top_k=5, top_p=0.5, seed=1)),
        (13, SamplingParams(temperature=2.0, top_p=0.3)),
    ]
    steps = 12
    alone = {rid: run([(rid, sp)], steps, engine_seed=0)[rid] for rid, sp in targets}
    batches = [
        targets + others,
        list(reversed(others + targets)),
        [others[1], targets[2], others[3], targets[0], targets[1]],  # greedy + top-p neighbours
        [targets[0], others[0], targets[2]],  # no top-p row: the top-k-only path
    ]
    for i, batch in enumerate(batches):
        got = run(batch, steps, engine_seed=100 + i)  # and the shared generator differs
        for rid, _ in targets:
            if rid in got:
                assert got[rid] == alone[rid], (i, rid)
    # Not vacuous: the targets are really random (not stuck on the argmax).
    assert len(set(alone[1])) > 3


def test_different_seeds_differ_and_engine_seed_drives_unseeded_rows():
    sp = SamplingParams(temperature=1.0)
    a = run([(5, dataclasses.replace(sp, seed=1))], 16, 0)[5]
    b = run([(5, dataclasses.replace(sp, seed=2))], 16, 0)[5]
    assert a != b
    assert run([(5, sp)], 16, engine_seed=3) == run([(5, sp)], 16, engine_seed=3)
    assert run([(5, sp)], 16, engine_seed=3) != run([(5, sp)], 16, engine_seed=4)


def test_generators_advance_only_on_their_own_random_steps():
    greedy = SamplingParams(temperature=0.0, seed=5)
    gen = greedy.new_generator()
    before = gen.get_state()
    Sampler()(torch.randn(2, 50), [greedy, SamplingParams()], [gen, None])
    assert torch.equal(gen.get_state(), before)
    rand = SamplingParams(seed=5)
    gen = rand.new_generator()
    Sampler()(torch.randn(1, 50), [rand], [gen])
    assert not torch.equal(gen.get_state(), before)


def test_seeded_row_without_generator_is_an_error():
    with pytest.raises(ValueError, match="seed"):
        Sampler()(torch.randn(2, 10), [SamplingParams(), SamplingParams(seed=1)])
    # A greedy seeded row needs none: it draws nothing.
    Sampler()(torch.randn(1, 10), [SamplingParams(seed=1, temperature=0.0)])


def test_bad_shapes_are_errors():
    sampler = Sampler()
    with pytest.raises(ValueError, match="logits"):
        sampler(torch.randn(10), [SamplingParams()])
    with pytest.raises(ValueError, match="sampling params"):
        sampler(torch.randn(2, 10), [SamplingParams()])
    with pytest.raises(ValueError, match="generators"):
        sampler(torch.randn(2, 10), [SamplingParams()] * 2, [None])
    with pytest.raises(ValueError, match="seed"):
        Sampler(seed=-1)


def test_input_logits_are_not_modified_and_low_precision_is_accepted():
    logits = torch.randn(4, 30)
    copy = logits.clone()
    params = [SamplingParams(top_k=3, top_p=0.5, min_tokens=2, stop_token_ids=[0])] * 4
    Sampler()(logits, params, output_lens=[0] * 4, eos_token_id=1)
    assert torch.equal(logits, copy)
    out = Sampler()(logits.bfloat16(), [SamplingParams(temperature=0.0)] * 4)
    assert torch.equal(out.sampled_token_ids, logits.bfloat16().float().argmax(-1))


# -- logprobs --------------------------------------------------------------------------------


def test_logprobs_are_raw_log_softmax_of_the_chosen_token_and_top_k():
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(4)) * 3
    raw = torch.log_softmax(logits, dim=-1)
    params = [
        SamplingParams(temperature=0.5, logprobs=5),  # raw: NOT log_softmax(logits / 0.5)
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(logprobs=0),
        SamplingParams(),  # none asked
        SamplingParams(top_k=2, logprobs=200),  # more than the vocabulary
    ]
    out = Sampler(seed=9)(logits, params)
    assert out.logprobs[3] is None
    for row, sp in enumerate(params):
        entry = out.logprobs[row]
        if sp.logprobs is None:
            continue
        tok = out.sampled_token_ids[row].item()
        assert entry.token_id == tok
        assert entry.logprob == pytest.approx(raw[row, tok].item(), abs=1e-6)
        assert entry.rank == int((raw[row] > raw[row, tok]).sum()) + 1
        k = min(sp.logprobs, 100)
        assert len(entry.top) == k
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True)
        ref_v, ref_i = raw[row].topk(k) if k else (torch.empty(0), torch.empty(0))
        assert [t for t, _ in entry.top] == ref_i.tolist()
        assert values == pytest.approx(ref_v.tolist(), abs=1e-6)
    assert out.logprobs[1].rank == 1  # greedy took the argmax


def test_logprobs_are_taken_before_min_tokens_masking():
    logits = torch.tensor([[0.0, 5.0, 1.0]])  # EOS (id 1) is the favourite
    sp = SamplingParams(temperature=0.0, min_tokens=3, logprobs=1)
    out = Sampler()(logits, [sp], output_lens=[0], eos_token_id=1)
    assert out.sampled_token_ids.item() == 2  # EOS blocked
    entry = out.logprobs[0]
    assert entry.top[0][0] == 1  # but the raw distribution still shows it on top
    assert entry.logprob == pytest.approx(torch.log_softmax(logits, -1)[0, 2].item())


# -- min_tokens ------------------------------------------------------------------------------


def test_apply_min_tokens_masks_stop_and_eos_until_min_tokens():
    params = [
        SamplingParams(min_tokens=3, stop_token_ids=[4]),
        SamplingParams(min_tokens=3, stop_token_ids=[4]),
        SamplingParams(min_tokens=3, stop_token_ids=[4], ignore_eos=True),
        SamplingParams(min_tokens=0, stop_token_ids=[4]),
        SamplingParams(min_tokens=5, stop_token_ids=[99]),  # beyond the vocab: skipped
    ]
    logits = torch.zeros(5, 6)
    out = apply_min_tokens(logits, params, output_lens=[2, 3, 0, 0, 1], eos_token_id=[0, 5])
    assert out is logits  # in place
    blocked = (logits == -math.inf).tolist()
    assert blocked[0] == [True, False, False, False, True, True]  # 2 < 3: EOS ids and stop id
    assert blocked[1] == [False] * 6  # reached min_tokens
    assert blocked[2] == [False, False, False, False, True, False]  # ignore_eos: only the stop
    assert blocked[3] == [False] * 6
    assert blocked[4] == [True, False, False, False, False, True]
    with pytest.raises(ValueError, match="output_lens"):
        apply_min_tokens(logits, params, output_lens=[0], eos_token_id=0)


def test_sampler_never_stops_before_min_tokens():
    vocab, eos = 8, 0
    logits = torch.full((64, vocab), -2.0)
    logits[:, eos] = 4.0  # EOS would win ~96% of the time
    logits[:, 3] = 3.0  # and the stop token most of the rest
    sp = SamplingParams(min_tokens=2, stop_token_ids=[3])
    sampler = Sampler(seed=0)
    early = sampler(logits, [sp] * 64, output_lens=[1] * 64, eos_token_id=eos)
    assert not torch.isin(early.sampled_token_ids, torch.tensor([eos, 3])).any()
    late = sampler(logits, [sp] * 64, output_lens=[2] * 64, eos_token_id=eos)
    assert (late.sampled_token_ids == eos).sum() > 40
