"""Does the calibrated verdict keep its promise? False-positive share and power by simulation.

A cell: N negatives drawn from a true null of independent models (match probability ~ Beta with
mean mu and concentration kappa, or "all-zero": independent models that never match), n points.
Each of R replicates draws fresh negatives, calibrates on them with :func:`ipguard.stats.fit_calibration`'s
rule, and asks :func:`ipguard.stats.assess`'s rule about one fresh independent model (a false
positive when it says ``pirated``). Reported per cell and level:

* ``fpr``: the share of the R fresh independent models called pirated, with its Monte Carlo
  standard error; the target is fpr <= level + 2 se in every cell;
* ``fpr_exact``: the same share averaged exactly over the fresh model's distribution (lower
  variance; the same expectation);
* ``plugin_fpr``: what the maximum-likelihood plug-in p-value (the null treated as exact) would do;
* ``power@r``: the share of copies matching each point with probability r called pirated;
* ``inconclusive``: the share of replicates whose calibration cannot reach the level at all;
* ``independents_cleared``: the share of fresh independent models called ``independent`` at the
  first level (the rest are ``inconclusive``: too few negatives, or matching more than all of them).

    python benchmarks/calibration.py --out benchmarks/results/calibration.json   # ~25 min on 2 cores
    python benchmarks/calibration.py --replicates 200 --negatives 2 10           # a quick look
    python benchmarks/calibration.py --markdown benchmarks/results/calibration.json  # README tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ipguard.stats import (
    DEFAULT_NUISANCE, _grid, log_pmf, p_curve, pirated_counts, tail_table,
)

NULL_MEANS = (0.02, 0.1, 0.35, 0.7)
NULL_KAPPAS = (3.0, 30.0, 300.0)
NEGATIVES = (2, 3, 5, 10, 20, 50)
LEVELS = (0.01, 0.05)
COPY_RATES = (0.3, 0.5, 0.7, 0.9)


class Tables:
    """The grid's log-pmf and tail tables for one n (shared by every replicate)."""

    def __init__(self, n: int) -> None:
        a, b, allowed = _grid()
        self.n = n
        self.log_pmf = log_pmf(np.arange(n + 1), n, a, b)
        self.log_pmf[~allowed] = -np.inf
        self.tails = tail_table(n, a, b)


def draw_counts(rng: np.random.Generator, null: tuple[float, float] | None, size: int, n: int) -> np.ndarray:
    """Match counts of ``size`` independent models under the null (None: all-zero)."""
    if null is None:
        return np.zeros(size, dtype=np.int64)
    mu, kappa = null
    return rng.binomial(n, rng.beta(mu * kappa, (1 - mu) * kappa, size=size))


def true_pmf(null: tuple[float, float] | None, n: int) -> np.ndarray:
    if null is None:
        out = np.zeros(n + 1)
        out[0] = 1.0
        return out
    mu, kappa = null
    return np.exp(log_pmf(np.arange(n + 1), n, np.array([mu * kappa]), np.array([(1 - mu) * kappa]))[0])


def binomial_pmf(rate: float, n: int) -> np.ndarray:
    from scipy import stats

    return stats.binom.pmf(np.arange(n + 1), n, rate)


def run_cell(tables: Tables, null: tuple[float, float] | None, negatives: int, replicates: int,
             levels: Sequence[float], nuisance: float, seed: int) -> dict[str, object]:
    n = tables.n
    rng = np.random.default_rng(seed)
    pmf = true_pmf(null, n)
    copies = {r: binomial_pmf(r, n) for r in COPY_RATES}
    hits = {lv: 0 for lv in levels}
    exact = {lv: [] for lv in levels}
    plugin = {lv: [] for lv in levels}
    power = {lv: {r: [] for r in COPY_RATES} for lv in levels}
    stuck = {lv: 0 for lv in levels}
    cleared = 0
    for _ in range(replicates):
        counts = draw_counts(rng, null, negatives, n)
        fresh = int(draw_counts(rng, null, 1, n)[0])
        ll = tables.log_pmf[:, counts].sum(axis=1)
        curve, holds = p_curve(ll, n, nuisance, tables.tails)
        top = counts.max() / n
        mle = int(np.argmax(ll))
        # assess() says "independent" only of a model some negative matches at least as well.
        cleared += bool(fresh <= counts.max() and holds and negatives >= 2 and curve[n] <= levels[0]
                        and curve[fresh] > levels[0])
        for lv in levels:
            called = pirated_counts(curve, n, negatives, holds, top, lv)
            hits[lv] += bool(called[fresh])
            exact[lv].append(float(pmf[called].sum()))
            plugin[lv].append(float(pmf[tables.tails[mle] <= lv].sum()))
            stuck[lv] += bool(curve[n] > lv or not holds or negatives < 2)
            for r in COPY_RATES:
                power[lv][r].append(float(copies[r][called].sum()))
    out: dict[str, object] = {}
    for lv in levels:
        f = hits[lv] / replicates
        out[str(lv)] = {
            "fpr": f, "fpr_se": math.sqrt(max(f * (1 - f), 1e-12) / replicates),
            "fpr_exact": float(np.mean(exact[lv])), "fpr_exact_se": float(np.std(exact[lv]) / math.sqrt(replicates)),
            "plugin_fpr": float(np.mean(plugin[lv])),
            "inconclusive": stuck[lv] / replicates,
            "independents_cleared": cleared / replicates,
            **{f"power@{r}": float(np.mean(power[lv][r])) for r in COPY_RATES},
        }
    return out


def nulls() -> list[tuple[str, tuple[float, float] | None]]:
    out: list[tuple[str, tuple[float, float] | None]] = [("all-zero", None)]
    out += [(f"mu={mu:g} kappa={k:g}", (mu, k)) for mu in NULL_MEANS for k in NULL_KAPPAS]
    return out


def markdown(result: dict) -> str:
    """The README's tables: false-positive share per null and N at each level, and power."""
    cells = {(r["null"], r["negatives"]): r["levels"] for r in result["cells"]}
    names = list(dict.fromkeys(r["null"] for r in result["cells"]))
    ns = sorted({r["negatives"] for r in result["cells"]})
    out = []
    for level in LEVELS:
        out.append(f"False-positive share at level {level:g}: sampled ± its Monte Carlo standard error "
                   f"({result['replicates']} fresh independent models per cell, each with fresh negatives; n = "
                   f"{result['n']} points), and in brackets the same share averaged exactly over the fresh model:\n")
        out.append("| null of independent models | " + " | ".join(f"N = {k}" for k in ns) + " |")
        out.append("|---|" + "---|" * len(ns))
        for name in names:
            row = [cells[(name, k)][str(level)] for k in ns]
            out.append(f"| {name} | " + " | ".join(f"{c['fpr']:.4f} ± {c['fpr_se']:.4f} ({c['fpr_exact']:.4f})" for c in row) + " |")
        out.append("")
    out.append(f"Plug-in maximum-likelihood null (the fitted null taken as exact), false-positive share at 0.01:\n")
    out.append("| null | " + " | ".join(f"N = {k}" for k in ns) + " |")
    out.append("|---|" + "---|" * len(ns))
    for name in names:
        out.append(f"| {name} | " + " | ".join(f"{cells[(name, k)]['0.01']['plugin_fpr']:.3f}" for k in ns) + " |")
    out.append("")
    out.append("Power at level 0.01: share of copies called pirated, by the rate r at which a copy matches each point:\n")
    out.append("| null | N | " + " | ".join(f"r = {r:g}" for r in COPY_RATES) + " | calibration cannot reach 0.01 |")
    out.append("|---|---|" + "---|" * (len(COPY_RATES) + 1))
    for name in names:
        if name not in ("mu=0.1 kappa=30", "mu=0.35 kappa=30", "mu=0.35 kappa=300"):
            continue
        for k in ns:
            c = cells[(name, k)]["0.01"]
            out.append(f"| {name} | {k} | " + " | ".join(f"{c[f'power@{r}']:.2f}" for r in COPY_RATES)
                       + f" | {c['inconclusive']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", metavar="RESULT.json", help="print the README tables of a saved result and stop")
    parser.add_argument("--n", type=int, default=100, help="fingerprint points (default 100)")
    parser.add_argument("--replicates", type=int, default=2000, help="fresh independent models per cell (default 2000)")
    parser.add_argument("--negatives", type=int, nargs="+", default=list(NEGATIVES), help="values of N")
    parser.add_argument("--nuisance", type=float, default=DEFAULT_NUISANCE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())), end="")
        return 0
    start = time.perf_counter()
    tables = Tables(args.n)
    rows = []
    for i, (name, null) in enumerate(nulls()):
        for negatives in args.negatives:
            cell = run_cell(tables, null, negatives, args.replicates, LEVELS, args.nuisance, args.seed + 1000 * i + negatives)
            rows.append({"null": name, "negatives": negatives, "levels": cell})
            worst = cell[str(LEVELS[0])]
            print(f"{name:22s} N={negatives:3d}  fpr@0.01={worst['fpr']:.4f}±{worst['fpr_se']:.4f} "
                  f"exact={worst['fpr_exact']:.4f} plugin={worst['plugin_fpr']:.4f} "
                  f"power@0.9={worst['power@0.9']:.3f} inconclusive={worst['inconclusive']:.2f}", file=sys.stderr)
    violations = [
        (r["null"], r["negatives"], lv) for r in rows for lv, c in r["levels"].items()
        if c["fpr"] > float(lv) + 2 * c["fpr_se"]
    ]
    result = {
        "n": args.n, "replicates": args.replicates, "nuisance": args.nuisance, "seed": args.seed,
        "seconds": time.perf_counter() - start, "cells": rows, "violations": violations,
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(f"{len(rows)} cells, {len(violations)} above level + 2 se: {violations}", file=sys.stderr)
    return 0 if not violations else 1


if __name__ == "__main__":
    raise SystemExit(main())
