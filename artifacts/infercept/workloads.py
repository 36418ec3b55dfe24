"""InferCept's augmented-LLM workloads (Abhyankar et al., ICML'24): requests that pause.

An augmented request generates some tokens, stops for an external call (an *interception*),
waits, gets the call's result appended to its context, and continues; a request is
intercepted several times. Each workload here is a list of :class:`~core.workload.schema.Request`
objects whose ``interceptions`` say where each pause happens, how long it lasts and how many
tokens come back, with ``kind`` naming the augmentation so a policy can estimate durations
per kind (``AUGMENTATIONS[kind].mean_duration_s``, or ``workload.params["mean_duration_s"]``
after scaling).

The six augmentation types (:data:`AUGMENTATIONS`; lengths in tokens, means with CV)

===============  =========  ================  ============================  ==========  ==========
kind             calls/req  generated / call  call duration in s (mean)     returned    prompt
===============  =========  ================  ============================  ==========  ==========
``arithmetic``   3.75       40, cv 0.5        lognormal, cv 0.5 (0.0001)    3, cv 0.3   1200, 0.2
``qa``           2.52       60, cv 0.5        lognormal, cv 0.5 (0.69)      44, cv 0.5  1500, 0.2
``virtual_env``  28.18      15, cv 0.5        lognormal, cv 0.5 (0.09)      28, cv 0.5  900, 0.2
``chatbot``      4.45       120, cv 0.8       authors' ``bimodal`` (10.0)   67, cv 1.0  100, 1.0
``image``        6.91       40, cv 0.5        authors' ``long`` (18.0)      20, cv 0.3  700, 0.3
``tts``          6.91       40, cv 0.5        authors' ``normal`` (11.0)    20, cv 0.3  700, 0.3
===============  =========  ================  ===================================  ==========  ==========

Provenance (also in each profile's ``sources``): neither the paper's Table 1 nor the authors'
trace (on a drive we cannot reach) was available here, so **every number in the table is an
assumption**, chosen to agree with what the authors published in reachable form: their blog
(mlsys.wuklab.io/posts/infercept) says a request is intercepted 3 to 28 times on average by
type, a calculator returns in well under a second, and text-to-speech and image generation take
about 20x longer. Calls per request, the fast tools' durations and the returned tokens follow
our recollection of Table 1 and must be checked against the paper before a claim rests on
them. Tokens between calls and prompt lengths are our estimates for the underlying tasks
(GSM8K-style calculator use, ReAct on Wikipedia, ALFWorld, ShareGPT-like chats, a
Visual-ChatGPT-style tool prompt).

The authors' five synthetic duration distributions (``benchmarks/final_tput_bench.py``) are
:data:`AUTHORS_DURATIONS`: ``normal`` ``|Normal(11, 3)|``, ``uniform`` ``Uniform(0.1, 20)``,
``short`` ``Gamma(0.5, 4)``, ``long`` ``|20 - Gamma(0.5, 4)|`` and ``bimodal`` (half short,
half long), in seconds. Their code never assigns them to augmentation types: each is the
duration of *every* call in a separate synthetic sweep. The mapping above (image -> long,
TTS -> normal, chatbot -> bimodal) is therefore our assumption: image generation runs a fixed
step count and mostly takes close to its cap, speech synthesis scales with the text and spreads
symmetrically, and a human either answers at once or after a pause. The sweep itself is
reproduced as the ``synthetic-<shape>`` profiles (:data:`SYNTHETIC_PROFILES`), following that
script's defaults: 1,024-token prompts, 16 calls per request, one every 16 generated tokens,
48 returned tokens per call, 1,024 generated tokens in all, and one duration drawn per request
and reused for all its calls.

Sampling (all profiles): calls per request are ``1 + Poisson(mean - 1)`` (at least one: an
augmented request is intercepted) unless the profile fixes the count; generated segments (before
each call and after the last), returned tokens and prompts are lognormal with the profile's mean
and CV; token ids are uniform random. :func:`toolbench_interceptions` builds the same shape
from the shipped ToolBench trajectories, whose call structure and returned tokens are real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from core.workload.arrivals import PoissonProcess
from core.workload.generators import N_SPECIAL, lognormal_lengths, random_tokens
from core.workload.schema import Interception, Request, Workload
from core.workload.tokenize import HashTokenizer, Tokenizer
from core.workload.toolbench import TOOLBENCH_GROUPS, load_toolbench
from core.workload.transforms import sessions_to_interceptions

# Independent random streams of one seed: lengths and durations never depend on the token
# stream, so length_scale and duration_scale rescale the same draws.
_STRUCTURE_STREAM = 0x1C
_TOKEN_STREAM = 0x1C7
_ARRIVAL_STREAM = 0x1CA

MIXED = "mixed"


# --------------------------------------------------------------------------- durations


class Duration(Protocol):
    """A distribution of call durations in seconds: ``sample`` gives ``n`` finite values
    >= 0 from ``rng``; ``mean`` is the distribution's exact mean."""

    @property
    def mean(self) -> float: ...

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


@dataclass(frozen=True)
class LogNormalDuration:
    """Lognormal with the given ``mean`` (> 0) and coefficient of variation ``cv`` (>= 0;
    0 makes every call last exactly ``mean``)."""

    mean: float
    cv: float

    def __post_init__(self) -> None:
        _check(self.mean > 0 and self.cv >= 0, f"lognormal needs mean > 0, cv >= 0: {self}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.cv == 0:
            return np.full(n, self.mean)
        s2 = math.log1p(self.cv**2)
        return rng.lognormal(math.log(self.mean) - s2 / 2, math.sqrt(s2), size=n)


@dataclass(frozen=True)
class AbsNormalDuration:
    """``|Normal(loc, scale)|`` (the absolute value keeps rare negative draws valid)."""

    loc: float
    scale: float

    def __post_init__(self) -> None:
        _check(self.scale > 0, f"normal needs scale > 0: {self}")

    @property
    def mean(self) -> float:
        # Mean of a folded normal.
        z = self.loc / self.scale
        return self.scale * math.sqrt(2 / math.pi) * math.exp(-z * z / 2) + self.loc * (
            1 - 2 * NormalDist().cdf(-z)
        )

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.abs(rng.normal(self.loc, self.scale, size=n))


@dataclass(frozen=True)
class UniformDuration:
    """``Uniform(low, high)`` with ``0 <= low <= high``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check(0 <= self.low <= self.high, f"uniform needs 0 <= low <= high: {self}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=n)


@dataclass(frozen=True)
class GammaDuration:
    """``Gamma(shape, scale)``; with ``cap`` set, ``|cap - Gamma(shape, scale)|`` (the
    authors' "long" distribution: most calls last close to ``cap``)."""

    shape: float
    scale: float
    cap: float | None = None

    def __post_init__(self) -> None:
        _check(self.shape > 0 and self.scale > 0, f"gamma needs shape, scale > 0: {self}")
        _check(self.cap is None or self.cap >= 0, f"gamma cap must be >= 0: {self}")

    @property
    def mean(self) -> float:
        k, theta = self.shape, self.scale
        if self.cap is None:
            return k * theta
        # E|c - G| = c - E[G] + 2 E[(G - c)+], with E[(G - c)+] from the incomplete gamma.
        x = self.cap / theta
        q = _gamma_q(k, x)
        tail = k * theta * (q + math.exp(k * math.log(x) - x - math.lgamma(k + 1))) - self.cap * q
        return self.cap - k * theta + 2 * tail

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        g = rng.gamma(self.shape, self.scale, size=n)
        return g if self.cap is None else np.abs(self.cap - g)


@dataclass(frozen=True)
class MixtureDuration:
    """Each call's duration comes from ``components[j]`` with probability ``weights[j]``."""

    components: tuple[Duration, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        _check(
            len(self.components) == len(self.weights) > 0
            and all(w >= 0 for w in self.weights)
            and sum(self.weights) > 0,
            f"mixture needs one non-negative weight per component: {self}",
        )

    @property
    def mean(self) -> float:
        total = sum(self.weights)
        return sum(w * c.mean for w, c in zip(self.weights, self.components, strict=True)) / total

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = np.asarray(self.weights, dtype=float) / sum(self.weights)
        which = rng.choice(len(self.components), size=n, p=p)
        draws = np.stack([c.sample(rng, n) for c in self.components])
        return draws[which, np.arange(n)]


def _gamma_q(k: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(k, x) (series below k + 1, continued fraction
    above), to double precision; scipy is not a dependency."""
    if x <= 0:
        return 1.0
    front = math.exp(k * math.log(x) - x - math.lgamma(k))
    if x < k + 1:
        term = total = 1.0 / k
        a = k
        while term > total * 1e-16:
            a += 1
            term *= x / a
            total += term
        return max(0.0, 1.0 - front * total)
    tiny = 1e-300
    b = x + 1 - k
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - k)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return front * h


_SHORT = GammaDuration(0.5, 4.0)
_LONG = GammaDuration(0.5, 4.0, cap=20.0)

AUTHORS_DURATIONS: dict[str, Duration] = {
    "normal": AbsNormalDuration(11.0, 3.0),
    "uniform": UniformDuration(0.1, 20.0),
    "short": _SHORT,
    "long": _LONG,
    "bimodal": MixtureDuration((_SHORT, _LONG), (0.5, 0.5)),
}
"""The authors' synthetic call-duration distributions in seconds (``final_tput_bench.py``)."""

TOOLBENCH_DURATION = LogNormalDuration(1.0, 1.0)
"""Default duration of a ToolBench (RapidAPI) call. Assumption: ToolBench records no timing; a
web API round trip of about a second with a heavy tail (as ``load_toolbench``'s 1 s default)."""


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class AugmentationProfile:
    """One augmentation type: how its requests are shaped and how long its calls last.

    Contract: a request of this kind has ``num_interceptions`` calls on average (exactly
    ``round(num_interceptions)`` if ``fixed_interceptions``, else ``1 + Poisson(mean - 1)``);
    it generates a lognormal(``tokens_between``, ``tokens_between_cv``) segment before each
    call and a lognormal(``tail_tokens`` or ``tokens_between``) segment after the last; each
    call lasts a draw of ``duration`` seconds (one draw per request reused for every call if
    ``duration_per_request``) and returns lognormal(``returned_tokens``,
    ``returned_tokens_cv``) tokens; the prompt is lognormal(``prompt_len``, ``prompt_len_cv``).
    All lengths are at least one token. ``sources`` says where each value comes from
    (``paper``, ``code``, ``blog`` or ``assumption``, with a reason).
    """

    name: str
    description: str
    num_interceptions: float
    tokens_between: float
    tokens_between_cv: float
    duration: Duration
    returned_tokens: float
    returned_tokens_cv: float
    prompt_len: float
    prompt_len_cv: float
    tail_tokens: float | None = None
    fixed_interceptions: bool = False
    duration_per_request: bool = False
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check(self.num_interceptions >= 1, f"{self.name}: num_interceptions must be >= 1")
        for key in ("tokens_between", "returned_tokens", "prompt_len"):
            _check(getattr(self, key) > 0, f"{self.name}: {key} must be > 0")
        _check(self.tail_tokens is None or self.tail_tokens > 0, f"{self.name}: tail_tokens > 0")

    @property
    def mean_duration_s(self) -> float:
        """Mean seconds per call, before any ``duration_scale``."""
        return self.duration.mean

    @property
    def mean_output_len(self) -> float:
        """Mean generated tokens per request (returned tokens excluded)."""
        tail = self.tokens_between if self.tail_tokens is None else self.tail_tokens
        return self.num_interceptions * self.tokens_between + tail

    def sample_counts(self, rng: np.random.Generator) -> int:
        if self.fixed_interceptions:
            return round(self.num_interceptions)
        return 1 + int(rng.poisson(self.num_interceptions - 1))


_TABLE1 = (
    "assumption: the paper's Table 1 was unreachable; value as we recall it, within the "
    "authors' blog statements (3-28 calls per request; calculator < 1 s; TTS and image ~20x "
    "longer); verify against the paper"
)
_OURS = "assumption: our estimate for the task"
_AUTHORS_SHAPE = (
    "code shape (final_tput_bench.py); its assignment to this type is our assumption, the "
    "authors applied each shape to a whole synthetic workload"
)


def _src(**overrides: str) -> dict[str, str]:
    base = {
        "num_interceptions": _TABLE1,
        "tokens_between": _OURS,
        "duration": _TABLE1,
        "returned_tokens": _TABLE1,
        "prompt_len": _OURS,
    }
    return {**base, **overrides}


def _aug(
    name: str,
    description: str,
    calls: float,
    between: tuple[float, float],
    dist: Duration,
    returned: tuple[float, float],
    prompt: tuple[float, float],
    **sources: str,
) -> AugmentationProfile:
    """One row of the table: (mean, cv) pairs for the lognormal lengths; ``sources``
    overrides the default provenance per field."""
    return AugmentationProfile(
        name=name,
        description=description,
        num_interceptions=calls,
        tokens_between=between[0],
        tokens_between_cv=between[1],
        duration=dist,
        returned_tokens=returned[0],
        returned_tokens_cv=returned[1],
        prompt_len=prompt[0],
        prompt_len_cv=prompt[1],
        sources=_src(**sources),
    )


# fmt: off
AUGMENTATIONS: dict[str, AugmentationProfile] = {p.name: p for p in (
    # kind, description, calls per request, (tokens between, cv),
    # call duration, (returned tokens, cv), (prompt tokens, cv), source overrides
    _aug("arithmetic", "calculator calls in step-by-step math (GSM8K-style)", 3.75, (40, 0.5),
         LogNormalDuration(1e-4, 0.5), (3, 0.3), (1200, 0.2)),
    _aug("qa", "question answering with a Wikipedia API (ReAct on HotpotQA)", 2.52, (60, 0.5),
         LogNormalDuration(0.69, 0.5), (44, 0.5), (1500, 0.2)),
    _aug("virtual_env", "an embodied agent in ALFWorld, one call per action", 28.18, (15, 0.5),
         LogNormalDuration(0.09, 0.5), (28, 0.5), (900, 0.2)),
    _aug("chatbot", "multi-turn chat: the call is the human's next turn", 4.45, (120, 0.8),
         AUTHORS_DURATIONS["bimodal"], (67, 1.0), (100, 1.0), duration=_AUTHORS_SHAPE),
    _aug("image", "image generation by a diffusion model", 6.91, (40, 0.5),
         AUTHORS_DURATIONS["long"], (20, 0.3), (700, 0.3),
         duration=_AUTHORS_SHAPE, returned_tokens=_OURS),
    _aug("tts", "text-to-speech by a speech model", 6.91, (40, 0.5),
         AUTHORS_DURATIONS["normal"], (20, 0.3), (700, 0.3),
         duration=_AUTHORS_SHAPE, returned_tokens=_OURS),
)}
# fmt: on
"""The six augmentation types; see the module docstring for the table and its provenance."""

_SYNTH = (
    "code: final_tput_bench.py defaults (input_len 1024, output_len 1024, api_max_calls 16, "
    "api_inv_offset 16, api_ret_len 48), read as one call every 16 generated tokens"
)


def _synthetic(shape: str, duration: Duration) -> AugmentationProfile:
    return AugmentationProfile(
        name=f"synthetic-{shape}",
        description=f"the authors' synthetic sweep with {shape} call durations",
        num_interceptions=16,
        tokens_between=16,
        tokens_between_cv=0.0,
        duration=duration,
        returned_tokens=48,
        returned_tokens_cv=0.0,
        prompt_len=1024,
        prompt_len_cv=0.0,
        tail_tokens=1024 - 16 * 16,
        fixed_interceptions=True,
        duration_per_request=True,  # the script draws one time per request for all its calls
        sources={
            "num_interceptions": _SYNTH,
            "tokens_between": _SYNTH,
            "returned_tokens": _SYNTH,
            "prompt_len": _SYNTH,
            "duration": "code: final_tput_bench.py generate_exec_times",
        },
    )


SYNTHETIC_PROFILES: dict[str, AugmentationProfile] = {
    f"synthetic-{shape}": _synthetic(shape, dist) for shape, dist in AUTHORS_DURATIONS.items()
}
"""The authors' synthetic single-distribution workloads, one per :data:`AUTHORS_DURATIONS`."""

INFERCEPT_PROFILES: dict[str, AugmentationProfile] = {**AUGMENTATIONS, **SYNTHETIC_PROFILES}


# --------------------------------------------------------------------------- generators


def _scaled(n: int, scale: float) -> int:
    """``n`` tokens after scaling: 0 stays 0, anything else keeps at least one token."""
    return 0 if n <= 0 else max(1, round(n * scale))


def _check_scales(length_scale: float, duration_scale: float) -> None:
    _check(
        length_scale > 0 and math.isfinite(length_scale),
        f"length_scale must be finite and > 0, got {length_scale}",
    )
    _check(
        duration_scale >= 0 and math.isfinite(duration_scale),
        f"duration_scale must be finite and >= 0, got {duration_scale}",
    )


def _check_rate(rate: float, num_requests: int | None) -> None:
    _check(rate > 0 and math.isfinite(rate), f"rate must be finite and > 0, got {rate}")
    _check(
        num_requests is None or num_requests >= 0, f"num_requests must be >= 0, got {num_requests}"
    )


def _profile(kind: str) -> AugmentationProfile:
    p = INFERCEPT_PROFILES.get(kind)
    if p is None:
        raise ValueError(
            f"unknown InferCept workload kind {kind!r}; choose one of "
            f"{', '.join(INFERCEPT_PROFILES)} or {MIXED!r}"
        )
    return p


def _kind_weights(mix: Mapping[str, float] | None) -> tuple[list[str], np.ndarray]:
    # The authors' mixture sampled the same number of requests from every augmentation's
    # file (combo_dataset.py, "merged_exp_uniform.json"): uniform over the six types.
    weights = dict(mix) if mix is not None else {k: 1.0 for k in AUGMENTATIONS}
    for k, w in weights.items():
        _profile(k)
        _check(w >= 0 and math.isfinite(w), f"mix weight for {k!r} must be finite and >= 0")
    total = sum(weights.values())
    _check(total > 0, "mix weights must not all be zero")
    return list(weights), np.array(list(weights.values()), dtype=float) / total


def generate_infercept_workload(
    kind: str,
    num_requests: int,
    rate: float,
    seed: int = 0,
    *,
    length_scale: float = 1.0,
    duration_scale: float = 1.0,
    vocab_size: int = 32000,
    mix: Mapping[str, float] | None = None,
) -> Workload:
    """``num_requests`` augmented requests of ``kind`` arriving as a Poisson process at ``rate``
    per second.

    ``kind`` is a key of :data:`AUGMENTATIONS` or :data:`SYNTHETIC_PROFILES`, or ``"mixed"``:
    each request's kind drawn uniformly from the six augmentation types (the authors' mix), or
    with the relative weights ``mix`` (kind -> weight). ``length_scale`` multiplies prompt,
    generated-segment and returned-token counts (at least one token each; the number of calls
    is kept) and ``duration_scale`` multiplies every call's duration, both applied to the same
    draws, so a scaled workload is the unscaled one shrunk (for real CPU runs). Prompt and
    returned token ids are uniform in ``[4, vocab_size)``.

    Request ids are ``"infercept:<i>"`` (arrival order); metadata: ``augmentation`` (the kind)
    and ``num_interceptions``. ``params["mean_duration_s"]`` maps every kind present to its
    mean call duration after ``duration_scale`` (what a per-kind estimator would learn).
    Same arguments, same workload. An unknown kind raises ValueError naming it and the choices.
    """
    _check_rate(rate, num_requests)
    _check_scales(length_scale, duration_scale)
    _check(vocab_size > N_SPECIAL, f"vocab_size must be > {N_SPECIAL}, got {vocab_size}")
    structure = np.random.default_rng([seed, _STRUCTURE_STREAM])
    tokens = np.random.default_rng([seed, _TOKEN_STREAM])
    if kind == MIXED:
        names, p = _kind_weights(mix)
        kinds = [names[j] for j in structure.choice(len(names), size=num_requests, p=p)]
    else:
        _check(mix is None, f"mix is only for kind={MIXED!r}, got kind={kind!r}")
        kinds = [_profile(kind).name] * num_requests
    arrivals = PoissonProcess(rate).times(
        num_requests, np.random.default_rng([seed, _ARRIVAL_STREAM])
    )

    requests = []
    for i, name in enumerate(kinds):
        prof = INFERCEPT_PROFILES[name]
        n = prof.sample_counts(structure)
        segs = lognormal_lengths(structure, prof.tokens_between, prof.tokens_between_cv, n)
        tail_mean = prof.tokens_between if prof.tail_tokens is None else prof.tail_tokens
        tail = int(lognormal_lengths(structure, tail_mean, prof.tokens_between_cv, 1)[0])
        rets = lognormal_lengths(structure, prof.returned_tokens, prof.returned_tokens_cv, n)
        durs = prof.duration.sample(structure, 1 if prof.duration_per_request else n)
        durs = np.broadcast_to(durs, (n,)) * duration_scale
        prompt_len = int(lognormal_lengths(structure, prof.prompt_len, prof.prompt_len_cv, 1)[0])

        icps, generated = [], 0
        for seg, ret, dur in zip(segs, rets, durs, strict=True):
            generated += _scaled(int(seg), length_scale)
            ids = tuple(random_tokens(tokens, _scaled(int(ret), length_scale), vocab_size))
            icps.append(Interception(generated, float(dur), len(ids), name, ids))
        prompt = random_tokens(tokens, _scaled(prompt_len, length_scale), vocab_size)
        requests.append(
            Request(
                request_id=f"infercept:{i}",
                arrival_time=float(arrivals[i]),
                prompt_len=len(prompt),
                output_len=generated + _scaled(tail, length_scale),
                prompt_token_ids=prompt,
                interceptions=icps,
                metadata={"augmentation": name, "num_interceptions": n},
            )
        )
    return Workload(
        name=f"infercept-{kind}(seed={seed})",
        requests=requests,
        sources=["generator:infercept"],
        params={
            "kind": kind,
            "num_requests": num_requests,
            "rate": rate,
            "seed": seed,
            "length_scale": length_scale,
            "duration_scale": duration_scale,
            "vocab_size": vocab_size,
            "mix": dict(mix) if mix is not None else None,
            "mean_duration_s": {
                k: INFERCEPT_PROFILES[k].mean_duration_s * duration_scale
                for k in sorted(set(kinds))
            },
        },
    )


def _duration_of(duration: Duration | str) -> Duration:
    if not isinstance(duration, str):
        return duration
    if duration == "toolbench":
        return TOOLBENCH_DURATION
    if duration in AUTHORS_DURATIONS:
        return AUTHORS_DURATIONS[duration]
    if duration in AUGMENTATIONS:
        return AUGMENTATIONS[duration].duration
    raise ValueError(
        f"unknown duration distribution {duration!r}; choose 'toolbench', one of "
        f"{', '.join(AUTHORS_DURATIONS)}, an augmentation kind ({', '.join(AUGMENTATIONS)}), "
        f"or pass a Duration"
    )


def toolbench_interceptions(
    num_requests: int | None = None,
    rate: float = 1.0,
    seed: int = 0,
    *,
    duration: Duration | str = "toolbench",
    length_scale: float = 1.0,
    duration_scale: float = 1.0,
    kind: str = "toolbench",
    root: str | os.PathLike[str] | None = None,
    groups: Sequence[str] = TOOLBENCH_GROUPS,
    tokenizer: Tokenizer | None = None,
) -> Workload:
    """Augmented requests from the shipped ToolBench trajectories (real tool-call structure).

    Each usable trajectory (13 shipped) is folded into one request that pauses at every
    function call (:func:`~core.workload.transforms.sessions_to_interceptions`): the prompt is
    the tool prompt and query, the generated segments are the assistant messages, and each
    interception returns the tokens appended before the model continues (the function's
    result and its role headers), with their real ids. ``num_requests=None`` takes every trajectory once
    in file order; a number draws trajectories with replacement, as the authors drew requests
    from their trace. Arrivals are Poisson at ``rate``.

    Durations: ToolBench records none, so each call lasts a draw of ``duration`` (assumption):
    ``"toolbench"`` (:data:`TOOLBENCH_DURATION`, default), a key of :data:`AUTHORS_DURATIONS`,
    an augmentation kind (its distribution), or any :class:`Duration`. ``length_scale``
    truncates prompts, segments and returned tokens (their real ids, cut) and
    ``duration_scale`` multiplies durations, as in :func:`generate_infercept_workload`.

    Request ids ``"toolbench-infercept:<i>"``; interceptions have ``kind``; metadata:
    ``augmentation`` (= ``kind``), ``trajectory`` (the ToolBench session id), ``group``,
    ``functions`` (the function whose result each interception returns; None where the model
    called none and the pause returns only message headers), ``num_interceptions``.
    """
    _check_rate(rate, num_requests)
    _check_scales(length_scale, duration_scale)
    dist = _duration_of(duration)
    sessions = load_toolbench(
        root, groups=groups, tool_duration_s=0.0, tokenizer=tokenizer or HashTokenizer()
    )
    folded = sessions_to_interceptions(sessions, kind=kind)
    turns = sessions.sessions()
    base = list(folded.requests)
    _check(bool(base), f"no usable ToolBench trajectories in groups {list(groups)}")
    structure = np.random.default_rng([seed, _STRUCTURE_STREAM])
    if num_requests is None:
        picks = list(range(len(base)))
    else:
        picks = structure.choice(len(base), size=num_requests).tolist()
    arrivals = PoissonProcess(rate).times(
        len(picks), np.random.default_rng([seed, _ARRIVAL_STREAM])
    )

    requests = []
    for i, j in enumerate(picks):
        src = base[j]
        durs = dist.sample(structure, len(src.interceptions)) * duration_scale
        out_ids = src.output_token_ids or []
        icps, out, start = [], [], 0
        for icp, dur in zip(src.interceptions, durs, strict=True):
            seg = out_ids[start : icp.after_output_tokens]
            out += seg[: _scaled(len(seg), length_scale)]
            ret = (icp.returned_token_ids or ())[: _scaled(icp.returned_tokens, length_scale)]
            icps.append(Interception(len(out), float(dur), len(ret), kind, tuple(ret)))
            start = icp.after_output_tokens
        tail = out_ids[start:]
        out += tail[: _scaled(len(tail), length_scale)]
        prompt = (src.prompt_token_ids or [])[: _scaled(src.prompt_len, length_scale)]
        sid = src.session_id or src.request_id
        requests.append(
            Request(
                request_id=f"toolbench-infercept:{i}",
                arrival_time=float(arrivals[i]),
                prompt_len=len(prompt),
                output_len=len(out),
                prompt_token_ids=prompt,
                output_token_ids=out,
                interceptions=icps,
                metadata={
                    "augmentation": kind,
                    "trajectory": sid,
                    "group": src.metadata.get("group"),
                    "functions": [t.metadata.get("function") for t in turns[sid][:-1]],
                    "num_interceptions": len(icps),
                },
            )
        )
    return Workload(
        name=f"toolbench-infercept(seed={seed})",
        requests=requests,
        sources=list(sessions.sources),
        params={
            "num_requests": num_requests,
            "rate": rate,
            "seed": seed,
            "duration": repr(dist),
            "length_scale": length_scale,
            "duration_scale": duration_scale,
            "kind": kind,
            "groups": list(groups),
            "mean_duration_s": {kind: dist.mean * duration_scale},
        },
    )


# --------------------------------------------------------------------------- statistics


def _request_kind(r: Request) -> str:
    k = r.metadata.get("augmentation")
    if isinstance(k, str):
        return k
    return r.interceptions[0].kind if r.interceptions else "none"


def infercept_workload_stats(workload: Workload) -> dict[str, dict[str, Any]]:
    """Per kind (and ``"all"``): what :class:`AugmentationProfile` promises, measured.

    Requests are grouped by ``metadata["augmentation"]`` (else their first interception's
    kind, else ``"none"``); interceptions by their own ``kind``. Keys per kind: ``requests``,
    ``interceptions``, ``interceptions_per_request``, ``tokens_between_mean`` (tokens
    generated since the previous call or the start), ``duration_mean_s``,
    ``returned_tokens_mean``, ``context_at_interception_mean`` (prompt + generated + returned
    tokens when the call starts), ``prompt_len_mean``, ``output_len_mean``. Means over nothing
    are 0.0.
    """
    reqs: dict[str, list[Request]] = {}
    icps: dict[str, list[tuple[int, float, int, int]]] = {}
    for r in workload:
        for key in (_request_kind(r), "all"):
            reqs.setdefault(key, [])
            reqs[key].append(r)
        prev = returned = 0
        for icp in r.interceptions:
            row = (
                icp.after_output_tokens - prev,
                icp.duration_s,
                icp.returned_tokens,
                r.prompt_len + icp.after_output_tokens + returned,
            )
            for key in (icp.kind, "all"):
                icps.setdefault(key, []).append(row)
            prev, returned = icp.after_output_tokens, returned + icp.returned_tokens

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values)) if len(values) else 0.0

    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(reqs) | set(icps), key=lambda k: (k == "all", k)):
        rs, rows = reqs.get(key, []), icps.get(key, [])
        cols = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
        out[key] = {
            "requests": len(rs),
            "interceptions": len(rows),
            "interceptions_per_request": mean([len(r.interceptions) for r in rs]),
            "tokens_between_mean": mean(cols[0]),
            "duration_mean_s": mean(cols[1]),
            "returned_tokens_mean": mean(cols[2]),
            "context_at_interception_mean": mean(cols[3]),
            "prompt_len_mean": mean([r.prompt_len for r in rs]),
            "output_len_mean": mean([r.output_len for r in rs]),
        }
    return out
