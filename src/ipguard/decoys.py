"""Decoys: held-out natural images the owner labels with a large margin, asked among the
fingerprint points so that a suspect service cannot treat fingerprint queries apart unseen.

Any good model, a copy or an independent one, labels such images as the owner does, about as
often as the known independent models do. So a suspect that answers the decoys

- *worse* than every known independent model can (by a binomial test at the level) degrades
  queries it finds suspicious (it randomises or refuses them): its fingerprint answers cannot
  show independence;
- *better* than every known independent model can, while its fingerprint answers look
  independent, agrees with the owner where it sees no fingerprint and not where it does: it may
  detect fingerprint queries.

Either way the verdict is ``inconclusive`` with that reason, never ``independent``; neither rule
can turn a verdict into ``pirated``.

Decoys are natural images, and a detector of unnatural inputs lets them through: a thief's
autoencoder in front of a stolen CIFAR-10 copy flags 73-100 % of IPGuard's points and 2 % of the
decoys (``benchmarks/service_answers.py``). The fingerprint answers themselves show it where
independent models match many points: such a service matches *fewer* of them than any
independent model would (:func:`judge_low_matches`, the null's lower tail), which again makes the
verdict ``inconclusive``, not ``independent``. How often the negatives agree with the owner on the decoys is
measured at calibration (``decoy_calibration`` in the calibrated set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from scipy.stats import binom
from torch import nn

from ipguard.data import Split
from ipguard.models import logits

if TYPE_CHECKING:
    from ipguard.stats import Assessment, Calibration


def choose_decoys(model: nn.Module, pool: Split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` images of ``pool`` that ``model`` labels with the largest logit margin (top-1 minus
    top-2), and its labels of them; ties keep the pool's order."""
    if n < 1 or n > pool.x.shape[0]:
        raise ValueError(f"decoys: need 1 <= n <= {pool.x.shape[0]} (the images held out for them), got {n}")
    out = logits(model, pool.x)
    top = out.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    keep = torch.argsort(margin, descending=True, stable=True)[:n]
    return pool.x[keep].clone(), out[keep].argmax(1)


@dataclass(frozen=True)
class DecoyCalibration:
    """How many of ``n`` decoys each known independent model labels as the owner does."""

    n: int
    agreements: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"n": self.n, "agreements": list(self.agreements),
                "min_rate": min(self.agreements) / self.n, "max_rate": max(self.agreements) / self.n}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DecoyCalibration:
        n, agreements = int(data["n"]), tuple(int(a) for a in data["agreements"])  # type: ignore[arg-type, union-attr]
        if n < 1 or not agreements or any(not 0 <= a <= n for a in agreements):
            raise ValueError(f"malformed decoy calibration (n {n}, agreements {agreements})")
        return cls(n, agreements)


def judge_decoys(agree: int, n: int, cal: DecoyCalibration, verdict: str, level: float) -> str | None:
    """Why a suspect that labels ``agree`` of ``n`` decoys as the owner (and got ``verdict`` from
    its fingerprint answers) must be called ``inconclusive``; None when the decoys raise no doubt."""
    lo, hi = min(cal.agreements) / cal.n, max(cal.agreements) / cal.n
    if binom.cdf(agree, n, lo) < level:
        return (f"it labels {agree}/{n} decoys (held-out images the owner labels with a large margin) as the owner "
                f"does, fewer than any known independent model would (they agree on at least {lo:.0%}): it degrades "
                "queries it finds suspicious, so its fingerprint answers cannot show independence")
    if verdict == "independent" and binom.sf(agree - 1, n, hi) < level:
        return (f"it labels {agree}/{n} decoys as the owner does, more than any known independent model would (at "
                f"most {hi:.0%}), while its fingerprint answers look independent: it may detect fingerprint queries")
    return None


def judge_low_matches(matches: int, n: int, negatives: Sequence[int], level: float) -> str | None:
    """Why a suspect whose fingerprint answers look independent (``matches`` of ``n`` points) must
    be called ``inconclusive``: it matches fewer points than independent models rarely do (the
    lower tail of the same beta-binomial null, fitted to the negatives' mismatch counts, at
    ``level``). Independent models share many of the owner's labels on points made from real
    images; a service that detects fingerprint queries and answers them wrongly shares fewer.
    None when the answers raise no doubt, or when the null cannot be fitted that way round."""
    from ipguard.stats import fit_calibration, p_value

    if not negatives or not 0 <= matches <= n:
        return None
    try:
        low = fit_calibration([n - int(c) for c in negatives], n, level)
    except ValueError:
        return None
    if not low.converged or low.min_p_value > level:
        return None
    p = p_value(n - matches, n, low)
    if p > level:
        return None
    return (f"it matches {matches}/{n} points, fewer than independent models would (they match "
            f"{min(negatives)}-{max(negatives)}; p = {p:.3g} for so few): a service may detect fingerprint "
            "queries and answer them wrongly, so its answers cannot show independence")


def assess_answers(matches: int, n: int, calibration: Calibration, level: float) -> Assessment:
    """``verify``'s verdict on a suspect's fingerprint answers: :func:`ipguard.stats.assess`'s
    upper tail, except that an ``independent`` which matches fewer points than the negatives would
    (:func:`judge_low_matches`) is ``inconclusive``: a service may be answering them wrongly."""
    from ipguard.stats import Assessment, assess

    verdict = assess(matches, n, calibration, level)
    if verdict.verdict != "independent":
        return verdict
    why = judge_low_matches(matches, n, calibration.matches, level)
    if why is None:
        return verdict
    return Assessment(verdict.p_value, "inconclusive",
                      f"{why} (by the upper tail alone: independent, p = {verdict.p_value:.3g})")


def decoy_agreements(model: nn.Module, decoys: Sequence[torch.Tensor]) -> int:
    """How many decoys ``model`` labels as the owner did."""
    inputs, labels = decoys
    return int((logits(model, inputs).argmax(1) == labels).sum())
