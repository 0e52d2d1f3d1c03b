"""Negatives of two kinds: what the calibration's self-check buys and what it costs, by simulation.

The beta null assumes every independent model's match rate comes from one law. A real zoo mixes
kinds: on cifar10_cpu, fgsm's negatives unlike the owner match 26-38 % of its points, while two
models of the owner's own architecture and recipe trained on the owner's own data ("twins")
match 50 % and 61 %, and the null fitted on the others called the 61 % twin pirated (p = 0.0008).
The self-check (:func:`ipguard.stats.worst_negative`) leaves each negative out in turn; when the
null of the others calls it pirated, no suspect is called pirated at that level.

Each cell draws R zoos of N negatives, ``twins`` of them from the twin law and the rest from the
unlike law (match probability ~ Beta with mean mu and concentration kappa, n points), calibrates
on them, and reports, at level 0.01, exactly over a fresh model's match count:

* ``fpr_twin``: the share of fresh twins called pirated, without and with the self-check;
* ``fpr_unlike``: the same for fresh models of the unlike kind;
* ``power``: the share of copies matching each point with probability 0.9 called pirated;
* ``flagged``: the share of zoos whose self-check fires (every verdict of ``pirated`` withheld).

    python benchmarks/mixed_null.py --out benchmarks/results/mixed_null.json   # ~8 min on 2 cores
    python benchmarks/mixed_null.py --replicates 50                             # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sstats

from ipguard.stats import DEFAULT_NUISANCE, _curve, _key, fit_calibration, log_pmf, pirated_counts

LEVEL = 0.01
COPY_RATE = 0.9
# fgsm on cifar10_cpu: unlike negatives at 0.31 on average, nearly binomial spread; twins at 0.55.
UNLIKE = (0.31, 300.0)
TWIN = (0.55, 300.0)
# (N negatives, how many of them twins): the zoo's 33 with 2 twins, then fewer and more twins
# (none: the self-check's cost on a null of one kind, and what a fresh twin meets when the owner
# calibrated on no model like its own), and 10 negatives with none or one.
CELLS = ((33, 2), (33, 0), (33, 1), (33, 4), (33, 8), (10, 0), (10, 1))


def _pmf(law: tuple[float, float], n: int) -> np.ndarray:
    mu, kappa = law
    return np.exp(log_pmf(np.arange(n + 1), n, np.array([mu * kappa]), np.array([(1 - mu) * kappa]))[0])


def run_cell(negatives: int, twins: int, n: int, replicates: int, seed: int) -> dict[str, float]:
    """One cell's shares (see the module docstring), each the mean over ``replicates`` zoos."""
    rng = np.random.default_rng(seed)
    pmf_twin, pmf_unlike = _pmf(TWIN, n), _pmf(UNLIKE, n)
    pmf_copy = sstats.binom.pmf(np.arange(n + 1), n, COPY_RATE)
    acc = {k: 0.0 for k in ("fpr_twin", "fpr_twin_checked", "fpr_unlike", "fpr_unlike_checked",
                            "power", "power_checked", "flagged")}
    for _ in range(replicates):
        rates = np.concatenate([rng.beta(TWIN[0] * TWIN[1], (1 - TWIN[0]) * TWIN[1], size=twins),
                                rng.beta(UNLIKE[0] * UNLIKE[1], (1 - UNLIKE[0]) * UNLIKE[1], size=negatives - twins)])
        matches = rng.binomial(n, rates).tolist()
        cal = fit_calibration(matches, n, LEVEL)
        curve, holds = _curve(_key(matches), n, DEFAULT_NUISANCE, n)
        worst = cal.worst_negative[0]
        plain = pirated_counts(curve, n, cal.negatives, holds, cal.max_matching_rate, LEVEL)
        checked = pirated_counts(curve, n, cal.negatives, holds, cal.max_matching_rate, LEVEL, worst)
        for name, called in (("", plain), ("_checked", checked)):
            acc["fpr_twin" + name] += float(pmf_twin[called].sum())
            acc["fpr_unlike" + name] += float(pmf_unlike[called].sum())
            acc["power" + name] += float(pmf_copy[called].sum())
        acc["flagged"] += float(worst <= LEVEL)
    return {k: v / replicates for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=300)
    parser.add_argument("--n", type=int, default=100, help="fingerprint points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the cells as JSON here")
    args = parser.parse_args(argv)
    if args.replicates < 1 or args.n < 1:
        parser.error("--replicates and --n must be positive")
    start = time.perf_counter()
    cells = []
    for i, (negatives, twins) in enumerate(CELLS):
        cell = {"negatives": negatives, "twins": twins,
                **run_cell(negatives, twins, args.n, args.replicates, args.seed + i)}
        cells.append(cell)
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in cell.items()}), flush=True)
    out = {"level": LEVEL, "n": args.n, "replicates": args.replicates, "seed": args.seed, "unlike": UNLIKE,
           "twin": TWIN, "copy_rate": COPY_RATE, "cells": cells, "seconds": round(time.perf_counter() - start, 1)}
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
