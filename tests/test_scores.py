"""SAC's scores and the verdict on a continuous score: right values, valid p-values, honest verdicts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ipguard.scores import correlation_matrix, label_pair_similarity, sac_similarity
from ipguard.stats import (
    ScoreCalibration,
    assess_score,
    fit_score_calibration,
    leave_one_out_scores,
    score_p_value,
)


def test_correlation_matrix_is_sacs() -> None:
    out = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    c = correlation_matrix(out)
    assert c.dtype == torch.float64 and c.shape == (6, 6)
    assert torch.allclose(c, c.T) and torch.allclose(torch.diagonal(c), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0
    cos = torch.nn.functional.cosine_similarity(out[0:1].double(), out[3:4].double()).item()
    assert c[0, 3].item() == pytest.approx((1 - cos) / 2)
    # Each row's scale does not matter (cosine), so neither does a temperature on the logits.
    assert torch.allclose(correlation_matrix(out * torch.rand(6, 1) * 5 + 0), c, atol=1e-12)


def test_sac_similarity_is_one_for_the_owner_and_lower_for_others() -> None:
    g = torch.Generator().manual_seed(1)
    owner = torch.randn(50, 10, generator=g)
    assert sac_similarity(owner, owner.clone()) == pytest.approx(1.0)
    close = owner + 0.1 * torch.randn(50, 10, generator=g)
    other = torch.randn(50, 10, generator=g)
    assert 1.0 > sac_similarity(owner, close) > sac_similarity(owner, other) > 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        sac_similarity(owner, owner[:10])
    with pytest.raises(ValueError, match="at least 2 queries"):
        correlation_matrix(owner[:1])


def test_label_similarity_counts_pairs_and_is_sacs_distance_on_one_hot_outputs() -> None:
    owner = torch.tensor([0, 0, 1, 2])
    assert label_pair_similarity(owner, owner) == 1.0
    # A suspect that renames the classes answers every "same label?" alike: SAC cannot tell.
    assert label_pair_similarity(owner, torch.tensor([5, 5, 3, 1])) == 1.0
    # One point moved from class 0 to 2: pairs (0,1) and (1,3) change among the 6.
    suspect = torch.tensor([0, 2, 1, 2])
    assert label_pair_similarity(owner, suspect) == pytest.approx(1 - 2 / 6)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(10, (40,), generator=g), torch.randint(10, (40,), generator=g)
    n = 40
    official = float((correlation_matrix(torch.nn.functional.one_hot(a, 10).float())
                      - correlation_matrix(torch.nn.functional.one_hot(b, 10).float())).abs().mean())
    assert official == pytest.approx((1 - label_pair_similarity(a, b)) * (n - 1) / (2 * n))


def _fpr(null: str, negatives: int, level: float, reps: int, seed: int) -> tuple[float, float]:
    """The share of fresh independent models called pirated, and its Monte Carlo standard error."""
    rng = np.random.default_rng(seed)
    called = 0
    for _ in range(reps):
        if null == "logit-normal":
            draw = 1 / (1 + np.exp(-rng.normal(1.5, 0.6, size=negatives + 1)))
        else:  # beta: the null's own family, and skewed on the logit scale (where a normal fit fails)
            draw = rng.beta(8, 2, size=negatives + 1)
        cal = fit_score_calibration(draw[:-1].tolist(), level)
        called += assess_score(float(draw[-1]), cal).verdict == "pirated"
    share = called / reps
    return share, math.sqrt(level * (1 - level) / reps)


@pytest.mark.parametrize("null", ["logit-normal", "beta"])
@pytest.mark.parametrize("negatives", [2, 10])
def test_false_positive_share_stays_under_the_level(null: str, negatives: int) -> None:
    share, se = _fpr(null, negatives, 0.05, 200, seed=negatives)
    assert share <= 0.05 + 2 * se, (null, negatives, share)


def test_verdicts_on_a_continuous_score() -> None:
    negatives = [0.80, 0.83, 0.78, 0.85, 0.81, 0.79, 0.82, 0.84]
    cal = fit_score_calibration(negatives, level=0.01, models=[f"m{i}" for i in range(8)])
    assert cal.converged and cal.mean == pytest.approx(np.mean(negatives), abs=0.01) and cal.min_p_value < 1e-4
    copy = assess_score(0.99, cal)
    assert copy.verdict == "pirated" and copy.p_value < 1e-3
    assert assess_score(0.82, cal).verdict == "independent"
    # Above every negative but not far enough for the level: not pirated, and it says so.
    near = assess_score(0.86, cal)
    assert near.verdict == "inconclusive" and "more negatives" in near.reason
    ps = [score_p_value(s, cal) for s in (0.86, 0.9, 0.95, 0.99)]
    assert all(a > b for a, b in itertools.pairwise(ps))
    assert assess_score(0.999, fit_score_calibration([0.8], 0.01)).verdict == "inconclusive"
    # Two negatives: the null is so uncertain that even a perfect score cannot reach 1e-3.
    two = fit_score_calibration([0.80, 0.84], 0.001)
    assert two.min_p_value > 0.001 and assess_score(1.0, two).verdict == "inconclusive"
    loo = leave_one_out_scores(negatives, 0.01)
    assert all(a is not None and a.verdict != "pirated" for a in loo)
    again = ScoreCalibration.from_dict(cal.to_dict())
    assert again == cal and cal.to_dict()["kind"] == "continuous"


def test_a_continuous_null_that_fails_one_of_its_negatives_calls_nothing_pirated() -> None:
    """The self-check of :func:`ipguard.stats.worst_score_negative`: 20 negatives of one kind and a
    near-twin of the owner far above them; the null of the others calls the twin pirated."""
    unlike = np.random.default_rng(4).beta(40, 60, size=20).round(4).tolist()
    names = [f"m{i}" for i in range(20)]
    cal = fit_score_calibration(unlike, 0.01, models=names)
    assert cal.worst_negative[0] > 0.05 and assess_score(0.95, cal).verdict == "pirated"
    twin = fit_score_calibration(unlike + [0.75], 0.01, models=names + ["twin"])
    p, who = twin.worst_negative
    assert who == "twin" and p == score_p_value(0.75, cal) and p <= 0.01
    copy = assess_score(0.95, twin)
    assert copy.p_value <= 0.01 and copy.verdict == "inconclusive" and "twin" in copy.reason
    assert twin.to_dict()["worst_negative"] == "twin"


def test_bad_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one negative"):
        fit_score_calibration([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_score_calibration([0.5, 1.2])
    with pytest.raises(ValueError, match="level"):
        fit_score_calibration([0.5, 0.6], level=1.0)
    with pytest.raises(ValueError, match="score must lie"):
        score_p_value(float("nan"), fit_score_calibration([0.5, 0.6]))
    with pytest.raises(ValueError, match="malformed"):
        ScoreCalibration.from_dict({"scores": ["x"]})
