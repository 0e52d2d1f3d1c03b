"""A verdict that holds up: how unlikely is a suspect's match count for an independent model?

Independent models do not match a fingerprint at a rate of 0: they agree with the owner on some
points by chance, at a rate that depends on the data, the method, k and the model. We model an
independent model's match probability as p ~ Beta(a, b) (mean mu = a / (a + b), concentration
kappa = a + b), so that its match count X on n points is beta-binomial. The null's (mu, kappa) is
unknown: the owner only has the match counts of N known independent models (the negatives).

Plugging the maximum-likelihood fit into the tail P(X >= x) treats the fitted null as exact. With
few negatives that is badly wrong: a simulation of a true Beta(20, 60) null with n = 100 called
8 % of fresh independent models pirated at level 0.01 from 2 negatives, 2.7 % from 21, and
negatives that match nothing fit a null so narrow that one matching point looks like theft.

The p-value here accounts for that uncertainty, after Berger & Boos ("P values maximized over a
confidence set for the nuisance parameter", JASA 89(427):1012-1016, 1994). Let U_nu(x) be the
upper end of a one-sided (1 - nu) profile-likelihood bound on the true tail P(X >= x):

    U_nu(x) = max { P(X >= x | mu, kappa) : 2 (l_max - l(mu, kappa)) <= z_{1-nu}^2 }

with l the negatives' beta-binomial log-likelihood. At level alpha, a suspect is called pirated
when U_{s alpha}(x) <= (1 - s) alpha, s the share of the level spent on the null's uncertainty
(``nuisance``, 1/2 by default). Why that holds the level: let x* be the smallest count whose
true tail is <= (1 - s) alpha. A fresh independent model is called pirated only if X >= c, c the
smallest count that passes. If c >= x*, that happens with probability <= (1 - s) alpha; c < x*
needs the bound at the fixed count x* - 1 to fall below its true tail, which happens with
probability <= s alpha. So at most alpha in all, for every N. The rule is nested in alpha (a
larger alpha narrows the bound and raises the bar), so p(x) = the smallest alpha that calls x
pirated is a p-value with P(p <= alpha) <= alpha, as far as the bound's coverage holds. That
coverage is asymptotic in N; ``benchmarks/calibration.py`` measures the false-positive share by
simulation for N from 2 to 50, which is what shows it holds where it matters. The price: with
few negatives the bound is wide, so p stays large unless the suspect matches far more than
independent models can.

Two assumptions, both stated where verdicts are printed: independent models' match rates follow
a beta law, and that law is not U-shaped (max(a, b) >= 1: a single mode, possibly at 0 or 1).
Without the second, negatives that all match nothing are fitted as well by a law with real mass
at "matches everything", and no suspect could ever be told apart.

The maximum is taken on a grid of (logit mu, log kappa) (0.1 apart in both), and the region is
widened by one grid step in every direction so that the grid maximum does not undershoot the
maximum between grid points.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import special

VERDICTS = ("pirated", "independent", "inconclusive")
DEFAULT_NUISANCE = 0.5  # the share of a level spent on not knowing the null

# The (logit mu, log kappa) grid. kappa from 1 (the flattest non-U-shaped law at mu = 0.5 is
# uniform, kappa = 2; at the ends kappa can go down to 1) to 1e5 (binomial for any n used here).
_LOGIT_MU = np.round(np.arange(-10.0, 10.0 + 1e-9, 0.1), 10)
_LOG_KAPPA = np.round(np.arange(0.0, math.log(1e5) + 1e-9, 0.1), 10)


@functools.lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened (a, b) of every grid point, and the mask of points allowed (not U-shaped)."""
    mu = special.expit(_LOGIT_MU)[:, None]
    kappa = np.exp(_LOG_KAPPA)[None, :]
    a = np.broadcast_to(mu * kappa, (mu.size, kappa.size))
    b = np.broadcast_to((1.0 - mu) * kappa, (mu.size, kappa.size))
    allowed = np.maximum(a, b) >= 1.0 - 1e-12
    return a.ravel().copy(), b.ravel().copy(), allowed.ravel().copy()


def log_pmf(x: np.ndarray, n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log P(X = x) for X ~ BetaBinomial(n, a, b); rows are (a, b) pairs, columns the counts x."""
    x = np.asarray(x, dtype=np.float64)[None, :]
    a, b = a[:, None], b[:, None]
    log_choose = special.gammaln(n + 1) - special.gammaln(x + 1) - special.gammaln(n - x + 1)
    return log_choose + special.betaln(x + a, n - x + b) - special.betaln(a, b)


def tail_table(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X >= x) for x = 0..n (columns), one row per (a, b): summed from the far end for precision."""
    return _tails_from_log_pmf(log_pmf(np.arange(n + 1), n, a, b))


def _tails_from_log_pmf(table: np.ndarray) -> np.ndarray:
    tail = np.cumsum(np.exp(table)[:, ::-1], axis=1)[:, ::-1]
    return np.clip(tail, 0.0, 1.0)


# Fingerprint sets up to this size get the whole grid's log pmf computed once per n (about 19 MB
# at n = 100): a calibration table refits the null for every method and every left-out negative,
# and the special functions, not the fits, were its cost.
_TABLE_MAX_N = 256


@functools.lru_cache(maxsize=2)
def _log_pmf_table(n: int) -> np.ndarray:
    """:func:`log_pmf` of every grid point for x = 0..n (read-only)."""
    a, b, _ = _grid()
    table = log_pmf(np.arange(n + 1), n, a, b)
    table.setflags(write=False)
    return table


def _grid_log_pmf(x: np.ndarray, n: int, rows: np.ndarray | None = None) -> np.ndarray:
    """log P(X = x) at the grid points ``rows`` (all when None) for the counts ``x``."""
    if n <= _TABLE_MAX_N:
        table = _log_pmf_table(n)
        return table[:, x] if rows is None else table[np.ix_(rows, x)]
    a, b, _ = _grid()
    return log_pmf(x, n, a, b) if rows is None else log_pmf(x, n, a[rows], b[rows])


def deviance(loglik: np.ndarray) -> np.ndarray:
    """2 (l_max - l) at every grid point, then the smallest over its 3x3 neighbourhood.

    A point enters the bound once its own deviance or a neighbour's is within the cut-off: the
    bound is widened by one grid step in every direction, so that the maximum over grid points
    does not undershoot the maximum between them. Not allowed points stay at +inf.
    """
    shape = (_LOGIT_MU.size, _LOG_KAPPA.size)
    ll = loglik.reshape(shape)
    dev = 2.0 * (np.max(ll) - ll)
    grown = dev.copy()
    for d0 in (-1, 0, 1):
        for d1 in (-1, 0, 1):
            grown = np.minimum(grown, _shift2(dev, d0, d1))
    return np.where(np.isfinite(ll), grown, np.inf).ravel()


def _shift2(values: np.ndarray, d0: int, d1: int) -> np.ndarray:
    """``values`` moved by (d0, d1) grid steps, +inf where nothing moved in."""
    out = np.full_like(values, np.inf)
    h, w = values.shape
    out[max(d0, 0) : h - max(-d0, 0), max(d1, 0) : w - max(-d1, 0)] = values[max(-d0, 0) : h - max(d0, 0), max(-d1, 0) : w - max(d1, 0)]
    return out


def _bound_share(dev: np.ndarray) -> np.ndarray:
    """The nuisance level nu at which a deviance enters the one-sided bound: dev = z_{1-nu}^2."""
    return special.ndtr(-np.sqrt(dev))


# Points whose deviance is this large only matter for p-values below ~1e-12: left out.
_MAX_DEVIANCE = 50.0
# The fit "holds" when the 1 - 1e-4 bound (z^2 = 13.8) stays below the grid's largest mean.
_HOLD_DEVIANCE = float(special.ndtri(1.0 - 1e-4) ** 2)


def p_curve(loglik: np.ndarray, n: int, share: float, tails: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """p(x) for x = 0..n under the negatives' log-likelihood on the grid, and whether the fit holds.

    p(x) = inf { alpha : U_{share alpha}(x) <= (1 - share) alpha }, U_nu(x) the upper end of the
    one-sided (1 - nu) profile-likelihood bound on P(X >= x) (see the module docstring). The bound
    grows by whole grid points as nu falls, so the infimum is found exactly: with grid points
    sorted by deviance, the bound over the first k of them is their running maximum of the tail,
    and it holds for every alpha with share alpha above the level at which point k + 1 enters.
    ``tails``: the full :func:`tail_table` of the grid for this n, when the caller has it (the
    simulation benchmark). The fit does not hold when the bound reaches the grid's largest mean
    (negatives matching nearly every point).
    """
    dev = deviance(loglik)
    rows = np.nonzero(dev <= _MAX_DEVIANCE)[0]
    if rows.size == 0:
        return np.ones(n + 1), False
    rows = rows[np.argsort(dev[rows], kind="stable")]
    d = dev[rows]
    if tails is None:
        tail = _tails_from_log_pmf(_grid_log_pmf(np.arange(n + 1), n, rows))
    else:
        tail = tails[rows]
    running = np.maximum.accumulate(tail, axis=0)
    # Only the last point of a run of equal deviances can close a bound (equal ones enter together).
    last = np.append(d[1:] > d[:-1], True)
    enter_next = np.append(_bound_share(d[1:]), _bound_share(np.array([_MAX_DEVIANCE]))) / share
    alpha = np.maximum(running[last] / (1.0 - share), enter_next[last][:, None])
    curve = np.minimum(1.0, alpha.min(axis=0))
    curve[0] = 1.0
    near = rows[d <= _HOLD_DEVIANCE] // _LOG_KAPPA.size
    holds = bool(near.size and near.max() < _LOGIT_MU.size - 1)
    return curve, holds


def pirated_counts(curve: np.ndarray, n: int, negatives: int, holds: bool, top_rate: float, level: float,
                   worst_p: float = math.nan) -> np.ndarray:
    """Which match counts x = 0..n :func:`assess` calls ``pirated`` (the same rule, for all x at once).

    ``worst_p``: the calibration's self-check (:func:`worst_negative`); NaN leaves it out, which
    can only call more counts pirated.
    """
    x = np.arange(n + 1)
    if negatives < 2 or not holds or worst_p <= level:
        return np.zeros(n + 1, dtype=bool)
    return (curve <= level) & (x / n > top_rate)


def negatives_loglik(matches: Sequence[int], n: int) -> np.ndarray:
    """The negatives' beta-binomial log-likelihood at every grid point (-inf where not allowed)."""
    _, _, allowed = _grid()
    values, counts = np.unique(np.asarray(matches, dtype=np.int64), return_counts=True)
    ll = _grid_log_pmf(values, n) @ counts.astype(np.float64)
    return np.where(allowed, ll, -np.inf)


class _BetaNull:
    """What a calibration's maximum-likelihood Beta(alpha, beta) null says, for reports and
    ``verify --json`` (counts and continuous scores alike)."""

    alpha: float
    beta: float
    models: tuple[str, ...]

    @property
    def worst_negative(self) -> tuple[float, str]:
        """The self-check (:func:`worst_negative`): the smallest p-value of a negative under the
        null fitted on the others, and that negative's name."""
        raise NotImplementedError

    @property
    def mean(self) -> float:
        """Mean match rate (or score) of independent models under the maximum-likelihood null."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def spread(self) -> float:
        """Standard deviation of independent models' match rate (or score) under that null."""
        return math.sqrt(self.mean * (1.0 - self.mean) / (self.alpha + self.beta + 1.0))

    def _named(self, i: int) -> str:
        return self.models[i] if 0 <= i < len(self.models) else f"negative #{i + 1}"

    def _described(self, out: dict[str, Any]) -> dict[str, Any]:
        out["models"] = list(self.models)
        out["null_mean"] = self.mean
        out["null_spread"] = self.spread
        p, name = self.worst_negative
        out["worst_negative"], out["worst_negative_p"] = (name, p) if math.isfinite(p) else (None, None)
        return out


@dataclass(frozen=True)
class Calibration(_BetaNull):
    """The negatives' match counts on one fingerprint set, and what they say about the null.

    Only ``matches``, ``n``, ``level`` and ``nuisance`` decide p-values; the rest describes the fit
    (maximum-likelihood Beta, the smallest p-value it can give) for reports and ``verify --json``.
    """

    matches: tuple[int, ...]
    n: int
    level: float = 0.01
    nuisance: float = DEFAULT_NUISANCE
    alpha: float = math.nan
    beta: float = math.nan
    negatives: int = 0
    mean_matching_rate: float = math.nan
    max_matching_rate: float = math.nan
    min_p_value: float = 1.0
    converged: bool = False
    models: tuple[str, ...] = field(default=())

    @property
    def worst_negative(self) -> tuple[float, str]:
        p, i = worst_negative(self.matches, self.n, self.nuisance)
        return p, self._named(i)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["matches"] = list(self.matches)
        return self._described(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Rebuild a calibration; ``ValueError`` for one written by an older ipguard or malformed."""
        if not isinstance(data, dict) or "matches" not in data or "n" not in data:
            raise ValueError("calibrated by an older ipguard (no negatives' match counts); run calibrate again")
        try:
            kwargs = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            kwargs["matches"] = tuple(int(m) for m in data["matches"])
            kwargs["models"] = tuple(str(m) for m in data.get("models", ()))
            kwargs["n"] = int(data["n"])
            cal = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibration ({exc})") from exc
        _check(cal.matches, cal.n, cal.level, cal.nuisance)
        return cal


def _check(matches: Sequence[int], n: int, level: float, nuisance: float) -> None:
    if len(matches) == 0:
        raise ValueError("calibration needs at least one negative (independent) model")
    if n < 1:
        raise ValueError(f"n: need at least one fingerprint point, got {n}")
    if any(m < 0 or m > n for m in matches):
        raise ValueError(f"matches must lie in [0, {n}]")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    if not 0.0 < nuisance < 1.0:
        raise ValueError(f"nuisance: must lie in (0, 1), got {nuisance}")


def fit_calibration(
    matches: Sequence[int], n: int, level: float = 0.01, nuisance: float = DEFAULT_NUISANCE,
    models: Sequence[str] = (),
) -> Calibration:
    """Calibrate on the match counts of N known independent models (each on the same n points).

    ``nuisance`` is the share of any level spent on not knowing the null (see the module docstring).
    ``converged`` is False when the fit cannot be trusted: the likelihood region reaches the
    grid's upper edge of the mean (negatives that match nearly every point) or is empty.
    """
    x = [int(m) for m in matches]
    _check(x, n, level, nuisance)
    ll = negatives_loglik(x, n)
    a, b, _ = _grid()
    best = int(np.argmax(ll))
    curve, holds = _curve(_key(x), int(n), float(nuisance), int(n))
    rates = np.asarray(x, dtype=np.float64) / n
    return Calibration(
        matches=tuple(x), n=int(n), level=float(level), nuisance=float(nuisance), alpha=float(a[best]),
        beta=float(b[best]), negatives=len(x), mean_matching_rate=float(rates.mean()),
        max_matching_rate=float(rates.max()), min_p_value=float(curve[n]), converged=holds and bool(np.isfinite(ll[best])),
        models=tuple(models),
    )


def _key(matches: Sequence[int]) -> tuple[int, ...]:
    """The negatives' counts as a cache key: the fit depends on them as a multiset only."""
    return tuple(sorted(int(m) for m in matches))


@functools.lru_cache(maxsize=4096)
def _curve(matches: tuple[int, ...], n_neg: int, nuisance: float, n: int) -> tuple[np.ndarray, bool]:
    """p(x) for x = 0..n for a suspect matched on n points, and whether the fit holds (cached:
    a calibration is asked about many suspects, and every left-out subset of it about one more)."""
    curve, holds = p_curve(negatives_loglik(matches, n_neg), n, nuisance)
    curve.setflags(write=False)
    return curve, holds


def p_value(matches: int, n: int, calibration: Calibration) -> float:
    """The Berger-Boos p-value of ``matches`` out of ``n``: small means "unlikely to be independent"."""
    if not 0 <= matches <= n:
        raise ValueError(f"matches must lie in [0, {n}], got {matches}")
    return float(_curve(_key(calibration.matches), calibration.n, calibration.nuisance, int(n))[0][matches])


# The self-check. The beta law is an assumption about every kind of independent model at once. A
# zoo whose negatives are of several kinds (the owner's own architecture and recipe on the
# owner's own data, next to public models by other authors) can break it: one kind matches more,
# and a null fitted mostly on the others calls a fresh model of that kind pirated. On cifar10_cpu
# fgsm's null did so to ab48_s1_owner, the owner's near-twin (p = 0.0008, leave-one-out). No
# test of fit on a few dozen negatives proves the law right, but a null that calls one of its own
# negatives pirated is proven wrong for that negative's kind. So each negative is left out in
# turn and tested against the null of the others; if the smallest of those p-values is at most
# the level, no verdict of ``pirated`` at that level rests on this calibration.


@functools.lru_cache(maxsize=1024)
def _worst_count(matches: tuple[int, ...], n: int, nuisance: float) -> tuple[float, int]:
    """(smallest leave-one-out p-value, the count that gets it) over sorted ``matches``; (NaN, -1)
    with fewer than 2 negatives. Negatives with equal counts share one fit."""
    best: tuple[float, int] = (math.nan, -1)
    if len(matches) < 2:
        return best
    for v in sorted(set(matches), reverse=True):
        rest = list(matches)
        rest.remove(v)
        p = float(_curve(tuple(rest), n, nuisance, n)[0][v])
        if not p >= best[0]:
            best = (p, v)
    return best


def worst_negative(matches: Sequence[int], n: int, nuisance: float = DEFAULT_NUISANCE) -> tuple[float, int]:
    """The calibration's self-check: each negative's p-value under the null fitted on the other
    negatives, the smallest of them, and the index of the negative that gets it ((NaN, -1) with
    fewer than 2 negatives). At most the level means the null would call a known independent
    model pirated, so it cannot support a verdict of ``pirated`` at that level."""
    p, v = _worst_count(_key(matches), int(n), float(nuisance))
    return p, (list(matches).index(v) if v >= 0 else -1)


@dataclass(frozen=True)
class Assessment:
    """A suspect's p-value, its verdict, and why (always said for ``inconclusive``)."""

    p_value: float
    verdict: str
    reason: str


def _judge(p: float, level: float, negatives: int, converged: bool, floor: float, above_all: bool,
           unfit: str, said: str, top_said: str, worst: tuple[float, str] = (math.nan, "")) -> Assessment:
    """The verdict rules shared by counts and continuous scores (see :func:`assess`).

    ``above_all``: the suspect does better than every negative; ``unfit``: why the null cannot be
    fitted; ``said``: what the suspect did ("matches 40/40 points"); ``top_said``: how the best
    negative compares ("0.300 >= 0.250"); ``worst``: the self-check's p-value and negative (only
    asked for where it decides: it costs a fit per negative).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    if negatives < 2:
        return Assessment(p, "inconclusive", "a null fitted from fewer than 2 negatives cannot bound how much "
                          "independent models vary; calibrate with more independent models")
    if not converged:
        return Assessment(p, "inconclusive", f"{unfit}, so the null cannot be fitted; "
                          "this fingerprint set cannot tell copies from independent models")
    if floor > level:
        return Assessment(p, "inconclusive", f"with {negatives} negatives the smallest p-value this calibration can "
                          f"give is {floor:.3g}, above the level {level:g}; calibrate with more independent models "
                          "(or more points)")
    if p <= level and above_all and worst[0] <= level:
        return Assessment(p, "inconclusive", f"p = {p:.3g} <= {level:g}, but the same null calls a known independent "
                          f"model pirated: {worst[1]}, left out, gets p = {worst[0]:.3g} from the other negatives. "
                          f"They are not all of one kind (models like {worst[1]} match more), so the null does not "
                          "hold at this level; calibrate with more models of that kind")
    if p <= level and above_all:
        return Assessment(p, "pirated", f"p = {p:.3g} <= {level:g}: independent models rarely {said}")
    if p <= level:
        return Assessment(p, "inconclusive", f"p = {p:.3g} is below the level, but a known independent model "
                          f"does as well ({top_said}); the null does not fit its negatives")
    if above_all:
        return Assessment(p, "inconclusive", f"does better than every known independent model ({top_said}), but "
                          f"p = {p:.3g} > {level:g}: more negatives (or points) are needed to decide")
    return Assessment(p, "independent", f"p = {p:.3g} > {level:g}, and a known independent model does as well "
                      f"({top_said})")


def assess(matches: int, n: int, calibration: Calibration, level: float | None = None) -> Assessment:
    """The verdict on a suspect matching ``matches`` of ``n`` points.

    ``pirated`` needs p <= level from a calibration that can support the level, more matches
    than every known independent model, and a null that calls none of its own negatives pirated
    when that negative is left out (:func:`worst_negative`): a null that one of its own negatives
    would fail is not evidence. ``inconclusive`` says why whenever the evidence cannot reach the
    level either way: too few negatives, a fit that cannot be trusted, a floor of the p-value
    above the level, a null that fails its own negatives, or a suspect that matches more than
    every negative without reaching the level. ``independent`` is
    said only of a suspect that some known independent model matches at least as well.
    """
    level = calibration.level if level is None else float(level)
    p = p_value(matches, n, calibration)
    top, rate = max(calibration.matches) / calibration.n, matches / n
    above = rate > top
    return _judge(p, level, calibration.negatives, calibration.converged, p_value(n, n, calibration), above,
                  "the negatives match nearly every point", f"match {matches}/{n} points",
                  f"best negative {top:.3f} {'<' if above else '>='} {rate:.3f}", 
                  calibration.worst_negative if p <= level and above else (math.nan, ""))


def _others(models: Sequence[str], i: int) -> tuple[str, ...]:
    return tuple(m for j, m in enumerate(models) if j != i)


def leave_one_out(matches: Sequence[int], n: int, level: float = 0.01,
                  nuisance: float = DEFAULT_NUISANCE, models: Sequence[str] = ()) -> list[Assessment | None]:
    """Each negative assessed under a calibration fitted on the other negatives (an honest FPR).

    ``None`` where no other negative is left. ``models`` names the negatives in the reasons.
    """
    out: list[Assessment | None] = []
    for i in range(len(matches)):
        rest = [m for j, m in enumerate(matches) if j != i]
        out.append(assess(int(matches[i]), n, fit_calibration(rest, n, level, nuisance, _others(models, i)))
                   if rest else None)
    return out


def leave_one_out_p_values(matches: Sequence[int], n: int, level: float = 0.01,
                           nuisance: float = DEFAULT_NUISANCE) -> list[float]:
    """Each negative's p-value under a calibration fitted on the other negatives (NaN if none is left)."""
    return [a.p_value if a is not None else math.nan for a in leave_one_out(matches, n, level, nuisance)]


def combine_assessments(assessments: Mapping[str, Assessment], level: float) -> Assessment:
    """One verdict on a suspect from the verdicts of several fingerprint sets of the same owner.

    The combined p-value is Bonferroni's min(1, M × min p) over the M sets: valid whatever the
    dependence between the sets' p-values (one suspect answers all of them, so they are far from
    independent), at the price of a factor M. ``pirated`` needs one set whose own verdict is
    ``pirated`` (its p-value at most the level, more matches than every negative) with M × p at
    most the level; ``independent`` needs every set to say ``independent``; anything else is
    ``inconclusive``, with the reason. Sets whose p-value is NaN (no calibration) count in M but
    cannot make the verdict ``pirated``.
    """
    if not assessments:
        raise ValueError("combine_assessments: need at least one fingerprint set's assessment")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    m = len(assessments)
    finite = {k: a for k, a in assessments.items() if math.isfinite(a.p_value)}
    p = min(1.0, m * min(a.p_value for a in finite.values())) if finite else math.nan
    pirated = sorted((a.p_value, k) for k, a in finite.items() if a.verdict == "pirated" and m * a.p_value <= level)
    if pirated:
        p_min, key = pirated[0]
        return Assessment(p, "pirated", f"{key}: p = {p_min:.3g}, x {m} sets = {m * p_min:.3g} <= {level:g}")
    if all(a.verdict == "independent" for a in assessments.values()):
        return Assessment(p, "independent", f"every one of the {m} sets says independent")
    open_ = [f"{k}: {a.verdict}" + (f" (p = {a.p_value:.3g}, x {m} sets = {m * a.p_value:.3g} > {level:g})"
                                     if a.verdict == "pirated" else "")
             for k, a in assessments.items() if a.verdict != "independent"]
    return Assessment(p, "inconclusive", "; ".join(open_))


# Continuous scores (SAC and its label-only form): a similarity in [0, 1] instead of a count.
#
# The same construction as for counts, with the beta law itself in place of the beta-binomial:
# an independent model's score S ~ Beta(a, b), the negatives' beta log-likelihood on the same
# (logit mu, log kappa) grid, and the Berger-Boos p-value from the profile-likelihood bound on
# the tail P(S >= s) = I_{1-s}(b, a). A normal law on the logit scale (Student-t prediction) was
# tried first and rejected: on beta-distributed scores it called up to twice the level pirated
# (2 % at level 0.01 with 5-20 negatives). ``tests/test_scores.py`` simulates both kinds of null.
SCORE_EPS = 1e-6  # scores are clipped to [eps, 1 - eps] before the logit


def _clip(s: np.ndarray | float) -> np.ndarray:
    return np.clip(np.asarray(s, dtype=np.float64), SCORE_EPS, 1.0 - SCORE_EPS)


def scores_loglik(scores: Sequence[float]) -> np.ndarray:
    """The negatives' beta log-likelihood at every grid point (-inf where not allowed)."""
    a, b, allowed = _grid()
    s = _clip(np.asarray(scores))
    ll = (a - 1.0) * np.log(s).sum() + (b - 1.0) * np.log1p(-s).sum() - s.size * special.betaln(a, b)
    return np.where(allowed, ll, -np.inf)


def _score_p(score: float, scores: tuple[float, ...], nuisance: float) -> tuple[float, bool]:
    a, b, _ = _grid()
    tail = special.betainc(b, a, 1.0 - _clip(score))
    curve, holds = p_curve(scores_loglik(scores), 1, nuisance, tails=np.stack([np.ones_like(tail), tail], axis=1))
    return float(curve[1]), holds


@dataclass(frozen=True)
class ScoreCalibration(_BetaNull):
    """The negatives' scores on one fingerprint set with a continuous score (higher: more alike).

    ``scores``, ``level`` and ``nuisance`` decide p-values; the rest describes the fit (the
    maximum-likelihood Beta, the smallest p-value it can give) for reports and ``verify --json``.
    """

    scores: tuple[float, ...]
    level: float = 0.01
    nuisance: float = DEFAULT_NUISANCE
    alpha: float = math.nan
    beta: float = math.nan
    negatives: int = 0
    mean_score: float = math.nan
    max_score: float = math.nan
    min_p_value: float = 1.0
    converged: bool = False
    models: tuple[str, ...] = field(default=())

    @property
    def worst_negative(self) -> tuple[float, str]:
        p, i = worst_score_negative(self.scores, self.nuisance)
        return p, self._named(i)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = "continuous"
        out["scores"] = list(self.scores)
        return self._described(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreCalibration:
        """Rebuild a calibration; ``ValueError`` when malformed."""
        if not isinstance(data, dict) or "scores" not in data:
            raise ValueError("malformed continuous calibration (no negatives' scores)")
        try:
            kwargs = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            kwargs["scores"] = tuple(float(s) for s in data["scores"])
            kwargs["models"] = tuple(str(m) for m in data.get("models", ()))
            cal = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed continuous calibration ({exc})") from exc
        _check_scores(cal.scores, cal.level, cal.nuisance)
        return cal


def _check_scores(scores: Sequence[float], level: float, nuisance: float) -> None:
    if len(scores) == 0:
        raise ValueError("calibration needs at least one negative (independent) model")
    if not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores):
        raise ValueError("scores must lie in [0, 1]")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    if not 0.0 < nuisance < 1.0:
        raise ValueError(f"nuisance: must lie in (0, 1), got {nuisance}")


def fit_score_calibration(
    scores: Sequence[float], level: float = 0.01, nuisance: float = DEFAULT_NUISANCE, models: Sequence[str] = (),
) -> ScoreCalibration:
    """Calibrate a continuous score on the scores of N known independent models."""
    s = tuple(float(v) for v in scores)
    _check_scores(s, level, nuisance)
    ll = scores_loglik(s)
    a, b, _ = _grid()
    best = int(np.argmax(ll))
    floor, holds = _score_p(1.0, s, float(nuisance))
    return ScoreCalibration(
        scores=s, level=float(level), nuisance=float(nuisance), alpha=float(a[best]), beta=float(b[best]),
        negatives=len(s), mean_score=float(np.mean(s)), max_score=float(np.max(s)), min_p_value=floor,
        converged=holds and bool(np.isfinite(ll[best])), models=tuple(models),
    )


@functools.lru_cache(maxsize=1024)
def _worst_score(scores: tuple[float, ...], nuisance: float) -> tuple[float, float]:
    best: tuple[float, float] = (math.nan, math.nan)
    if len(scores) < 2:
        return best
    for v in sorted(set(scores), reverse=True):
        rest = list(scores)
        rest.remove(v)
        p = _score_p(v, tuple(rest), nuisance)[0]
        if not p >= best[0]:
            best = (p, v)
    return best


def worst_score_negative(scores: Sequence[float], nuisance: float = DEFAULT_NUISANCE) -> tuple[float, int]:
    """:func:`worst_negative` for continuous scores: the smallest p-value of a negative's score
    under the null fitted on the other negatives, and that negative's index."""
    s = [float(v) for v in scores]
    p, v = _worst_score(tuple(sorted(s)), float(nuisance))
    return p, (s.index(v) if math.isfinite(p) else -1)


def score_p_value(score: float, calibration: ScoreCalibration) -> float:
    """The Berger-Boos p-value of ``score`` under the negatives' beta null: small means "unlikely to be independent"."""
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ValueError(f"score must lie in [0, 1], got {score}")
    return _score_p(float(score), calibration.scores, calibration.nuisance)[0]


def assess_score(score: float, calibration: ScoreCalibration, level: float | None = None) -> Assessment:
    """The verdict on a suspect scoring ``score``: the rules of :func:`assess` for a continuous score."""
    level = calibration.level if level is None else float(level)
    p = score_p_value(score, calibration)
    top = calibration.max_score
    above = score > top
    return _judge(p, level, calibration.negatives, calibration.converged, calibration.min_p_value, above,
                  "the negatives score nearly 1", f"score {score:.4f}",
                  f"best negative {top:.4f} {'<' if above else '>='} {score:.4f}", 
                  calibration.worst_negative if p <= level and above else (math.nan, ""))


def leave_one_out_scores(scores: Sequence[float], level: float = 0.01, nuisance: float = DEFAULT_NUISANCE,
                         models: Sequence[str] = ()) -> list[Assessment | None]:
    """Each negative assessed under a calibration fitted on the other negatives (``None`` if none is left)."""
    out: list[Assessment | None] = []
    for i in range(len(scores)):
        rest = [s for j, s in enumerate(scores) if j != i]
        out.append(assess_score(float(scores[i]), fit_score_calibration(rest, level, nuisance, _others(models, i)))
                   if rest else None)
    return out


def verdicts_at_n(negatives: Sequence[int], positives: Sequence[int], n: int, level: float = 0.01,
                  nuisance: float = DEFAULT_NUISANCE) -> dict[str, Any]:
    """What n points buy: calibrated on every negative's count of n points, the p-value of a
    suspect that matches all n (the owner itself: no suspect can do better, so below this n no
    verdict of ``pirated`` is possible at ``level``) and the share of ``positives`` called
    pirated. The cost of a black-box check is its queries, so this is how many a verdict needs."""
    cal = fit_calibration(negatives, n, level, nuisance)
    full = assess(n, n, cal)
    called = [assess(int(m), n, cal).verdict == "pirated" for m in positives]
    return {"n": int(n), "floor_p": float(full.p_value), "owner_verdict": full.verdict,
            "positives_pirated": float(np.mean(called)) if called else None}
