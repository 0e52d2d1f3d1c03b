"""A calibrated verdict: how unlikely is a suspect's match count for an independent model?

Independent models do not match a fingerprint at a rate of 0: they agree with the owner on many
points by chance (the rate depends on the data, the method and k). We model an independent
model's match probability as p ~ Beta(a, b), so that its match count on n points is
beta-binomial, and fit (a, b) by maximum likelihood to the match counts of known independent
models (the negatives of the zoo). The spread of p across models is the uncertainty of that
estimate; a one-sided p-value P(X >= matches) under the fitted beta-binomial says how surprising
the suspect's matches are for an independent model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, special, stats


@dataclass(frozen=True)
class Calibration:
    """A fitted null distribution of independent models' match probability on one fingerprint set."""

    alpha: float
    beta: float
    negatives: int
    mean_matching_rate: float
    max_matching_rate: float
    level: float = 0.01

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def fit_calibration(matches: Sequence[int], n: Sequence[int] | int, level: float = 0.01) -> Calibration:
    """Fit Beta(a, b) to negatives' match counts by beta-binomial maximum likelihood.

    Needs at least one negative. Both a and b are kept >= 1, i.e. the match rate of independent
    models is assumed unimodal: without that, negatives that all matched none (or all) of the
    points are fitted by a U-shaped Beta that puts real mass on matching everything.
    """
    x = np.asarray(matches, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(n, dtype=np.float64), x.shape).copy()
    if x.size == 0:
        raise ValueError("calibration needs at least one negative (independent) model")
    if np.any(x < 0) or np.any(x > trials):
        raise ValueError("matches must lie in [0, n]")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    rates = x / trials

    def shape(theta: np.ndarray) -> tuple[float, float]:
        # Mean and concentration as the free parameters, so that hitting the concentration cap
        # (negatives no more spread than binomial sampling) leaves the mean where the data put it.
        mu, kappa = special.expit(theta[0]), np.exp(theta[1])
        return max(mu * kappa, 1.0), max((1 - mu) * kappa, 1.0)

    def nll(theta: np.ndarray) -> float:
        # The beta-binomial log-likelihood without its binomial coefficient (constant in a, b).
        a, b = shape(theta)
        return -float(np.sum(special.betaln(x + a, trials - x + b) - special.betaln(a, b)))

    mu = float(np.clip((x.sum() + 0.5) / (trials.sum() + 1), 1e-4, 1 - 1e-4))
    result = optimize.minimize(nll, np.array([special.logit(mu), np.log(50.0)]), method="L-BFGS-B",
                               bounds=[(-12.0, 12.0), (np.log(2.0), np.log(1e6))])
    a, b = shape(result.x)
    return Calibration(alpha=float(a), beta=float(b), negatives=int(x.size),
                       mean_matching_rate=float(rates.mean()), max_matching_rate=float(rates.max()), level=level)


def p_value(matches: int, n: int, calibration: Calibration) -> float:
    """P(X >= matches) for X ~ BetaBinomial(n, a, b): small means "unlikely to be independent"."""
    if not 0 <= matches <= n:
        raise ValueError(f"matches must lie in [0, {n}], got {matches}")
    if matches == 0:
        return 1.0
    return float(min(1.0, max(0.0, stats.betabinom.sf(matches - 1, n, calibration.alpha, calibration.beta))))


def verdict(p: float, level: float) -> str:
    """``pirated`` when the p-value is below the level, else ``independent``."""
    return "pirated" if p < level else "independent"


def leave_one_out_p_values(matches: Sequence[int], n: int, level: float = 0.01) -> list[float]:
    """Each negative's p-value under a calibration fitted on the other negatives (an honest FPR)."""
    out = []
    for i in range(len(matches)):
        rest = [m for j, m in enumerate(matches) if j != i]
        out.append(p_value(int(matches[i]), n, fit_calibration(rest, n, level)) if rest else math.nan)
    return out
