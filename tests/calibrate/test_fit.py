"""The calibration's fit (scripts/calibrate/fit.py): noisy samples become monotone tables, and
its parts, the monotone repair and the robust mean, on small hand-made inputs. (That a fitted
profile is exact at its grid points is checked with the model in tests/sim/test_profiled.py.)"""

from __future__ import annotations

import numpy as np

from scripts.calibrate.fit import fit_tables, monotone_repair, robust_mean
from tests.sim.test_profiled import GRID, samples


def test_fit_repairs_noise_into_monotone_tables():
    tables, _ = fit_tables(samples(noise=0.3, seed=1), GRID)
    for name in ("prefill", "decode", "mixed"):
        t = np.asarray(tables[name])
        assert np.all(np.diff(t, axis=0) >= -1e-15) and np.all(np.diff(t, axis=1) >= -1e-15)
    noisy = np.array([[1.0, 3.0, 2.0], [0.5, 2.5, 4.0]])
    fixed = monotone_repair(noisy)
    assert np.all(np.diff(fixed, axis=0) >= 0) and np.all(np.diff(fixed, axis=1) >= 0)
    assert robust_mean([1, 2, 3, 4, 100]) == 3.0 and robust_mean([1.0, 3.0]) == 2.0
