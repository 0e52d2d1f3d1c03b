"""Metrics on hand-made matching rates whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from ipguard.evaluate import aruc, robustness, roc_auc, summarize, tpr_at_fpr, uniqueness


def test_aruc_worked_example() -> None:
    # R(t) = 1 up to 0.9, then 1/2; U(t) = 0 up to 0.1, 1/2 on (0.1, 0.2], 1 above.
    # min: 0 on [0, .1], .5 on (.1, .2], 1 on (.2, .9], .5 on (.9, 1] -> .05 + .7 + .05
    assert aruc([1.0, 0.9], [0.1, 0.2]) == pytest.approx(0.8)


def test_aruc_extremes() -> None:
    assert aruc([1.0, 1.0], [0.0, 0.0]) == pytest.approx(1.0)
    assert aruc([0.5], [0.5]) == pytest.approx(0.0)
    assert aruc([0.2], [0.8]) == pytest.approx(0.0)
    # Perfectly separated: the area is the gap between them.
    assert aruc([0.8], [0.3]) == pytest.approx(0.5)
    # Half-steps: .5 on (.1, .3], 1 on (.3, .7], .5 on (.7, .9].
    assert aruc([0.7, 0.9], [0.1, 0.3]) == pytest.approx(0.6)


def test_aruc_matches_fine_numerical_integration() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = np.round(rng.uniform(0.3, 1.0, rng.integers(1, 15)), 2)
        neg = np.round(rng.uniform(0.0, 0.8, rng.integers(1, 15)), 2)
        t = (np.arange(200_000) + 0.5) / 200_000
        numeric = np.minimum(robustness(pos, t), uniqueness(neg, t)).mean()
        assert aruc(pos, neg) == pytest.approx(numeric, abs=1e-4)


def test_roc_auc_known_values() -> None:
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5], [0.5]) == 0.5
    # 3 of 4 pairs ordered, none tied.
    assert roc_auc([0.9, 0.4], [0.3, 0.6]) == pytest.approx(0.75)


def test_tpr_at_fpr() -> None:
    pos, neg = [0.95, 0.9, 0.6, 0.5], [0.1, 0.2, 0.7]
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(0.5)  # threshold above 0.7
    assert tpr_at_fpr(pos, neg, 0.34) == pytest.approx(1.0)  # one of three negatives allowed


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="positives"):
        aruc([], [0.1])
    with pytest.raises(ValueError, match="negatives"):
        aruc([0.5], [1.5])


def test_summary_has_every_metric() -> None:
    s = summarize([1.0, 0.9], [0.1, 0.2])
    assert s["aruc"] == pytest.approx(0.8) and s["auc"] == 1.0 and s["tpr_at_fpr"] == 1.0
