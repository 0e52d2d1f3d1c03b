"""Robustness, uniqueness, ARUC, ROC AUC and TPR at a low FPR from matching rates (DESIGN §1).

With P the matching rates of positive suspects (post-processed copies of the owner) and N those
of negative ones (independent models), at threshold t:

* robustness R(t) = share of P with MR >= t,
* uniqueness U(t) = share of N with MR < t,
* ARUC = ∫₀¹ min(R(t), U(t)) dt, computed exactly: both curves are step functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
    """ROC AUC with the matching rate as the score: P(MR_pos > MR_neg) + ½ P(tie) (scikit-learn's)."""
    from sklearn.metrics import roc_auc_score

    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    return float(roc_auc_score(_labels(p, q), np.concatenate([p, q])))


def tpr_at_fpr(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray, max_fpr: float = 0.01) -> float:
    """Best true-positive rate over thresholds ``MR >= t`` whose false-positive rate is <= ``max_fpr``."""
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr: must lie in [0, 1], got {max_fpr}")
    fpr, tpr = roc_curve(pos, neg)
    return float(tpr[fpr <= max_fpr].max())


def roc_curve(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold ``MR >= t``, from (0, 0) to (1, 1) (scikit-learn's,
    every point kept)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    fpr, tpr, _ = sk_roc_curve(_labels(p, q), np.concatenate([p, q]), drop_intermediate=False)
    return fpr, tpr


def _labels(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ones(len(p), dtype=np.int64), np.zeros(len(q), dtype=np.int64)])


def fpr_bound(max_fpr: float, negatives: int) -> float:
    """The false-positive rate a TPR "at ``max_fpr``" really holds to with ``negatives`` negatives.

    FPRs come in steps of 1/N, so the bound is floor(max_fpr × N) / N: with fewer than
    1/max_fpr negatives (N < 100 at 1 %) it is 0, i.e. the threshold lies above every negative.
    """
    if negatives < 1:
        raise ValueError("negatives: need at least one negative")
    return math.floor(max_fpr * negatives + 1e-9) / negatives


def tpr_label(max_fpr: float, negatives: int) -> str:
    """A column name for the TPR that says what N negatives can resolve: ``TPR@FPR<=1%`` only when
    N >= 1/max_fpr, else ``TPR@FPR=0 (N=21)`` (the smallest non-zero FPR N negatives resolve is 1/N)."""
    bound = fpr_bound(max_fpr, negatives)
    if bound == 0.0:
        return f"TPR@FPR=0 (N={negatives})"
    return f"TPR@FPR<={bound:.3g} (N={negatives})"


def summarize(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray, max_fpr: float = 0.01) -> dict[str, float]:
    """ARUC, AUC and TPR at ``max_fpr`` for one set of positives against the negatives.

    ``tpr_fpr_bound`` is the FPR that TPR really holds to (:func:`fpr_bound`): 0 with fewer than
    1/max_fpr negatives.
    """
    return {
        "aruc": aruc(pos, neg),
        "auc": roc_auc(pos, neg),
        "tpr_at_fpr": tpr_at_fpr(pos, neg, max_fpr),
        "tpr_fpr_bound": fpr_bound(max_fpr, len(neg)),
        "positives": float(len(pos)),
        "negatives": float(len(neg)),
        "min_positive_mr": float(np.min(pos)),
        "max_negative_mr": float(np.max(neg)),
    }


def _batch_metrics(p: np.ndarray, q: np.ndarray, max_fpr: float) -> dict[str, np.ndarray]:
    """ARUC, AUC and TPR at ``max_fpr`` for each row of (B, P) positives against (B, N) negatives.

    The same quantities as :func:`aruc`, :func:`roc_auc` and :func:`tpr_at_fpr`, vectorised
    over the rows (bootstrap resamples); a test checks them against the scalar functions.
    """
    rows = p.shape[0]
    # ARUC: the sorted rates with 0 and 1 bound intervals (a, b); duplicates give empty intervals.
    points = np.sort(np.concatenate([p, q, np.zeros((rows, 1)), np.ones((rows, 1))], axis=1), axis=1)
    a, b = points[:, :-1], points[:, 1:]
    r = (p[:, None, :] >= b[:, :, None]).mean(axis=2)
    u = (q[:, None, :] <= a[:, :, None]).mean(axis=2)
    area = np.sum((b - a) * np.minimum(r, u), axis=1)
    auc = (p[:, :, None] > q[:, None, :]).mean(axis=(1, 2)) + 0.5 * (p[:, :, None] == q[:, None, :]).mean(axis=(1, 2))
    # TPR at FPR <= max_fpr: at most m = floor(max_fpr × N) negatives may reach the threshold,
    # so the best threshold lies just above the (m+1)-th largest negative.
    m = int(math.floor(max_fpr * q.shape[1] + 1e-9))
    if m >= q.shape[1]:
        tpr = np.ones(rows)
    else:
        cut = -np.sort(-q, axis=1)[:, m]
        tpr = (p > cut[:, None]).mean(axis=1)
    return {"aruc": area, "auc": auc, "tpr_at_fpr": tpr}


def bootstrap_intervals(
    pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray, max_fpr: float = 0.01,
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap intervals of ARUC, AUC and TPR at ``max_fpr``.

    Positives and negatives are resampled independently (with replacement, each at its own
    size): they are two separate samples of models, and a joint resample could leave a replicate
    without one kind. Seeded: the same input and seed give the same bounds. Returns
    ``aruc_lo``/``aruc_hi``, ``auc_lo``/``auc_hi`` and ``tpr_at_fpr_lo``/``tpr_at_fpr_hi``.
    With a handful of suspects the intervals are wide, and a percentile interval describes
    sampling noise of these suspects only, not of the choice of suspects.
    """
    p = _as_array(pos, "positives")
    q = _as_array(neg, "negatives")
    if resamples < 1:
        raise ValueError(f"resamples: need at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    tail = 100.0 * (1.0 - confidence) / 2.0
    # In chunks, so that the (B, P+N, P) comparison arrays stay small for large zoos.
    chunk = max(1, 2_000_000 // ((p.size + q.size + 2) * max(p.size, q.size)))
    values: dict[str, list[np.ndarray]] = {"aruc": [], "auc": [], "tpr_at_fpr": []}
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        pi = rng.integers(0, p.size, size=(b, p.size))
        qi = rng.integers(0, q.size, size=(b, q.size))
        for key, v in _batch_metrics(p[pi], q[qi], max_fpr).items():
            values[key].append(v)
        done += b
    for key, parts in values.items():
        lo, hi = np.percentile(np.concatenate(parts), [tail, 100.0 - tail])
        out[f"{key}_lo"], out[f"{key}_hi"] = float(lo), float(hi)
    return out


PARTS = ("dev", "test")


def split_suspects(
    suspects: Iterable[tuple[str, str, str]], dev_fraction: float = 0.5, seed: int = 0,
) -> dict[str, str]:
    """Assign every suspect ``(name, kind, family)`` to ``dev`` or ``test``: a seeded, disjoint cover.

    ``kind`` is ``positive`` or ``negative`` (the owner is never a suspect of either part). The
    dev part is where settings (k, n, start, target) are chosen, the test part where every
    reported number is measured, so near-copies must not straddle the two where it can be helped:

    * negatives are kept whole by ``family`` (architecture and training data, or author): each
      family goes to one part. Only when every negative shares one family are its members split.
    * positives of a family with two or more members (pruning at several rates, the two
      quantizations) are split inside the family, so that both parts hold every kind of
      post-processing that can be in both: round(m × dev_fraction) of them (at least one, at most
      m - 1) go to dev, in a seeded order. A family of one member cannot be split; such families
      fill whichever part is further below its share.

    Units (families, or single suspects) are dealt in a seeded order, largest first, each to the
    part further below its target share (test on a tie: the reported part); when one part would stay empty and there
    are at least two units, the smallest unit of the other part moves there. The result depends
    on the names, kinds, families, ``dev_fraction`` and ``seed`` only, not on the input's order.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction: must lie in (0, 1), got {dev_fraction}")
    items = sorted({(str(name), str(kind), str(family)) for name, kind, family in suspects})
    names = [name for name, _, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("suspects: a name appears with two kinds or families")
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for kind in ("positive", "negative"):
        families: dict[str, list[str]] = {}
        for name, k, family in items:
            if k not in {"positive", "negative"}:
                raise ValueError(f"suspect '{name}': kind must be 'positive' or 'negative', got '{k}'")
            if k == kind:
                families.setdefault(str(family), []).append(name)
        total = sum(len(v) for v in families.values())
        if total == 0:
            continue
        counts = {"dev": 0, "test": 0}
        units: list[list[str]] = []
        if kind == "positive":
            for family in sorted(families):
                members = [families[family][i] for i in rng.permutation(len(families[family]))]
                if len(members) >= 2:
                    n_dev = min(max(int(round(len(members) * dev_fraction)), 1), len(members) - 1)
                    for i, name in enumerate(members):
                        out[name] = "dev" if i < n_dev else "test"
                    counts["dev"] += n_dev
                    counts["test"] += len(members) - n_dev
                else:
                    units.append(members)
        elif len(families) == 1:
            units = [[name] for name in next(iter(families.values()))]
        else:
            units = [families[f] for f in sorted(families)]
        assigned: dict[str, list[list[str]]] = {"dev": [], "test": []}
        order = [units[i] for i in rng.permutation(len(units))]
        for unit in sorted(order, key=len, reverse=True):  # stable: seeded order among equal sizes
            short = {"dev": dev_fraction * total - counts["dev"], "test": (1 - dev_fraction) * total - counts["test"]}
            part = "dev" if short["dev"] > short["test"] else "test"
            assigned[part].append(unit)
            counts[part] += len(unit)
        for part, other in (("dev", "test"), ("test", "dev")):
            if counts[part] == 0 and len(assigned[other]) >= 2:
                smallest = min(assigned[other], key=len)
                assigned[other].remove(smallest)
                assigned[part].append(smallest)
                counts[part] += len(smallest)
                counts[other] -= len(smallest)
        for part, part_units in assigned.items():
            for unit in part_units:
                for name in unit:
                    out[name] = part
    return out
