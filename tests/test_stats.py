"""The calibrated p-value: calibrated on independent models, small for copies."""

from __future__ import annotations

import numpy as np
import pytest

from ipguard.stats import Calibration, fit_calibration, leave_one_out_p_values, p_value, verdict


def test_fit_recovers_a_known_beta() -> None:
    rng = np.random.default_rng(0)
    n = 200
    rates = rng.beta(30, 70, size=400)
    matches = rng.binomial(n, rates)
    cal = fit_calibration(matches.tolist(), n)
    assert cal.mean == pytest.approx(0.3, abs=0.02)
    assert cal.alpha + cal.beta == pytest.approx(100, rel=0.35)


def test_p_values_are_calibrated_for_independent_models() -> None:
    """Under the null the p-value is (conservatively) uniform: P(p < a) <= a, roughly."""
    rng = np.random.default_rng(1)
    n = 100
    train = rng.binomial(n, rng.beta(20, 30, size=50))
    cal = fit_calibration(train.tolist(), n)
    test = rng.binomial(n, rng.beta(20, 30, size=4000))
    ps = np.array([p_value(int(m), n, cal) for m in test])
    for a in (0.01, 0.05, 0.2):
        assert (ps < a).mean() <= a * 1.5 + 0.005


def test_copies_get_tiny_p_values() -> None:
    cal = fit_calibration([40, 45, 50, 38, 47], 100)
    assert p_value(100, 100, cal) < 1e-6
    assert p_value(45, 100, cal) > 0.1
    assert verdict(p_value(100, 100, cal), 0.01) == "pirated"
    assert verdict(p_value(45, 100, cal), 0.01) == "independent"


def test_degenerate_negatives_stay_finite() -> None:
    cal = fit_calibration([0, 0, 0], 50)
    assert np.isfinite(cal.alpha) and np.isfinite(cal.beta)
    assert p_value(0, 50, cal) == 1.0 and p_value(50, 50, cal) < 1e-6


def test_leave_one_out_and_round_trip() -> None:
    ps = leave_one_out_p_values([40, 42, 44, 90], 100)
    assert ps[3] < 0.01 < min(ps[:3])
    cal = fit_calibration([40, 42], 100)
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="at least one"):
        fit_calibration([], 100)
    with pytest.raises(ValueError):
        p_value(101, 100, cal)
