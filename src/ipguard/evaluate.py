"""Robustness, uniqueness, ARUC, ROC AUC and TPR at a low FPR from matching rates (DESIGN §1).

With P the matching rates of positive suspects (post-processed copies of the owner) and N those
of negative ones (independent models), at threshold t:

* robustness R(t) = share of P with MR >= t,
* uniqueness U(t) = share of N with MR < t,
* ARUC = ∫₀¹ min(R(t), U(t)) dt, computed exactly: both curves are step functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: need a non-empty list of matching rates")
    if np.any((arr < 0) | (arr > 1)) or np.any(~np.isfinite(arr)):
        raise ValueError(f"{name}: matching rates must lie in [0, 1]")
    return arr


def robustness(pos: Sequence[float] | np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """R(t): share of positives whose matching rate is at least t."""
    p = _as_array(pos, "positives")
    return (p[None, :] >= np.atleast_1d(t)[:, None]).mean(axis=1)


def uniqueness(neg: Sequence[float] | np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """U(t): share of negatives whose matching rate is below t."""
    q = _as_array(neg, "negatives")
    return (q[None, :] < np.atleast_1d(t)[:, None]).mean(axis=1)


def aruc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float:
    """Exact area under min(R, U) over t in [0, 1].

    Between consecutive distinct matching rates a < b (with 0 and 1 added), every t in (a, b)
    has R(t) = share of P with MR >= b and U(t) = share of N with MR <= a; the interval adds
    (b - a) × min of the two.
    """
    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    points = np.unique(np.concatenate([p, q, [0.0, 1.0]]))
    a, b = points[:-1], points[1:]
    r = (p[None, :] >= b[:, None]).mean(axis=1)
    u = (q[None, :] <= a[:, None]).mean(axis=1)
    return float(np.sum((b - a) * np.minimum(r, u)))


def roc_auc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float:
    """ROC AUC with the matching rate as the score: P(MR_pos > MR_neg) + ½ P(tie)."""
    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    greater = (p[:, None] > q[None, :]).mean()
    ties = (p[:, None] == q[None, :]).mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray, max_fpr: float = 0.01) -> float:
    """Best true-positive rate over thresholds ``MR >= t`` whose false-positive rate is <= ``max_fpr``."""
    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr: must lie in [0, 1], got {max_fpr}")
    best = 0.0
    for t in np.unique(np.concatenate([p, q, [np.inf]])):
        if (q >= t).mean() <= max_fpr:
            best = max(best, float((p >= t).mean()))
    return best


def roc_curve(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([p, q]))[::-1]])
    fpr = np.array([(q >= t).mean() for t in thresholds])
    tpr = np.array([(p >= t).mean() for t in thresholds])
    return fpr, tpr


def summarize(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray, max_fpr: float = 0.01) -> dict[str, float]:
    """ARUC, AUC and TPR at ``max_fpr`` for one set of positives against the negatives."""
    return {
        "aruc": aruc(pos, neg),
        "auc": roc_auc(pos, neg),
        "tpr_at_fpr": tpr_at_fpr(pos, neg, max_fpr),
        "positives": float(len(pos)),
        "negatives": float(len(neg)),
        "min_positive_mr": float(np.min(pos)),
        "max_negative_mr": float(np.max(neg)),
    }
