"""pinned_profile: the row and the words naming the step profile a run's experiment used."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.artifact import Results, RunContext, Scale
from core.artifact.words import pinned_profile
from core.sim.profiled import pinned_origin

CTX = RunContext(scale=Scale.SMOKE, seed=0, out=Path("."))


def test_pinned_profile_names_where_it_was_measured_and_its_sha256():
    sha = "ab" * 32
    real = pd.DataFrame({"profile": ["profiles/gone.json"] * 2, "profile_sha256": [sha] * 2})
    found = pinned_profile(Results({"real": real, "sim": real.iloc[:0]}, CTX))
    assert found is not None
    row, words = found
    assert row.equals(real.iloc[0])
    assert words == f"{pinned_origin('profiles/gone.json', sha)}; sha256 {'ab' * 6}"
    assert "gone.json (unreadable now" in words


def test_no_words_without_the_experiment_or_its_profile():
    assert pinned_profile(Results({}, CTX)) is None
    assert pinned_profile(Results({"real": pd.DataFrame({"x": [1]})}, CTX)) is None
    other = pd.DataFrame({"profile": ["p.json"], "profile_sha256": ["0" * 64]})
    assert pinned_profile(Results({"other": other}, CTX)) is None
    assert pinned_profile(Results({"other": other}, CTX), "other") is not None
