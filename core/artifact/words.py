"""Words that several artifacts write alike in their claims' notes."""

from __future__ import annotations

import pandas as pd

from core.sim.profiled import pinned_origin

from .spec import Results


def pinned_profile(r: Results, experiment: str = "real") -> tuple[pd.Series, str] | None:
    """For a run whose ``experiment`` used a pinned step profile (columns ``profile`` and
    ``profile_sha256``): the experiment's first row, and where the profile was measured with the
    start of its sha256 (``"<origin>; sha256 <12 hex digits>"``). None when the run has no such
    experiment or it used no profile."""
    if experiment not in r or "profile" not in r[experiment]:
        return None
    row = r[experiment].iloc[0]
    sha = row["profile_sha256"]
    return row, f"{pinned_origin(row['profile'], sha)}; sha256 {sha[:12]}"
