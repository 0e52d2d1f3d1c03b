"""The calibrated verdict: valid whatever the number of negatives, inconclusive when it must be."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ipguard.stats import Calibration, assess, fit_calibration, leave_one_out, leave_one_out_p_values, p_value

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("calibration_bench", ROOT / "benchmarks" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fit_finds_the_null_mean() -> None:
    rng = np.random.default_rng(0)
    n = 200
    matches = rng.binomial(n, rng.beta(30, 70, size=400))
    cal = fit_calibration(matches.tolist(), n)
    assert cal.mean == pytest.approx(0.3, abs=0.02)
    assert cal.negatives == 400 and cal.converged
    assert 0.02 < cal.spread < 0.08  # sd of Beta(30, 70) is 0.046


def test_false_positive_share_stays_under_the_level_on_a_small_grid() -> None:
    """The benchmark's simulation, shrunk: N in {2, 5, 20}, three nulls, 400 fresh models each."""
    bench = _bench()
    tables = bench.Tables(50)
    for i, null in enumerate([None, (0.1, 30.0), (0.35, 100.0)]):
        for negatives in (2, 5, 20):
            cell = bench.run_cell(tables, null, negatives, 400, (0.01, 0.05), 0.5, seed=i * 100 + negatives)
            for level, c in cell.items():
                assert c["fpr"] <= float(level) + 2 * math.sqrt(float(level) * (1 - float(level)) / 400), (null, negatives, level, c)
                assert c["fpr_exact"] <= float(level), (null, negatives, level, c)


def test_the_plug_in_null_would_fail_where_ours_holds() -> None:
    """The old rule (the fitted null as if exact) calls far more independents pirated with few negatives."""
    bench = _bench()
    cell = bench.run_cell(bench.Tables(100), (0.25, 80.0), 3, 300, (0.01,), 0.5, seed=3)["0.01"]
    assert cell["plugin_fpr"] > 0.02 > cell["fpr_exact"]


def test_copies_are_pirated_and_independents_not() -> None:
    negatives = [8, 12, 5, 10, 9, 7, 11, 6, 13, 9, 8, 10, 12, 7, 9, 11, 10, 6]
    cal = fit_calibration(negatives, 100)
    copy = assess(90, 100, cal)
    assert copy.verdict == "pirated" and copy.p_value <= 1e-3
    fresh = assess(12, 100, cal)
    assert fresh.verdict == "independent" and fresh.p_value > 0.1
    assert p_value(0, 100, cal) == 1.0
    assert cal.min_p_value == pytest.approx(p_value(100, 100, cal)) and 0 < cal.min_p_value < 1e-3


def test_p_value_is_monotone_and_positive() -> None:
    cal = fit_calibration([20, 25, 30, 22, 27, 31, 24, 26], 100)
    ps = [p_value(x, 100, cal) for x in range(101)]
    assert all(a >= b for a, b in zip(ps, ps[1:]))
    assert min(ps) > 0


def test_few_negatives_are_inconclusive_never_pirated() -> None:
    for negatives in ([3], [1, 6]):
        a = assess(100, 100, fit_calibration(negatives, 100))
        assert a.verdict == "inconclusive" and "negatives" in a.reason
    assert fit_calibration([1, 6], 100).min_p_value > 0.01


def test_all_zero_negatives_do_not_make_one_match_look_like_theft() -> None:
    """A null fitted to negatives that match nothing must not call a model matching 1 point pirated."""
    cal = fit_calibration([0] * 5, 50)
    assert assess(1, 50, cal).verdict != "pirated"
    assert assess(5, 50, cal).verdict != "pirated"
    assert p_value(1, 50, cal) > 0.1


def test_a_suspect_no_better_than_a_negative_is_never_pirated() -> None:
    negatives = [5] * 19 + [60]
    cal = fit_calibration(negatives, 100)
    a = assess(60, 100, cal, level=0.5)
    assert a.verdict != "pirated"


def test_negatives_matching_everything_cannot_be_fitted() -> None:
    cal = fit_calibration([100] * 10, 100)
    assert not cal.converged
    a = assess(100, 100, cal)
    assert a.verdict == "inconclusive" and "nearly every point" in a.reason


def test_leave_one_out_and_round_trip() -> None:
    out = leave_one_out([8, 10, 12, 9, 11, 7, 10, 9, 12, 8, 90], 100)
    assert out[-1] is not None and out[-1].verdict == "pirated"
    assert all(a is not None and a.verdict != "pirated" for a in out[:-1])
    # Each negative is judged by a calibration fitted on the others only.
    rest = [8, 10, 12, 9, 11, 7, 10, 9, 12, 8]
    assert out[-1].p_value == p_value(90, 100, fit_calibration(rest, 100))
    assert math.isnan(leave_one_out_p_values([40], 100)[0])
    cal = fit_calibration([40, 42], 100, models=["a", "b"])
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert cal.to_dict()["null_mean"] == pytest.approx(cal.mean)


def test_bad_input_and_old_calibrations_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_calibration([], 100)
    with pytest.raises(ValueError, match="level"):
        fit_calibration([1, 2], 100, level=1.5)
    cal = fit_calibration([40, 42], 100)
    with pytest.raises(ValueError):
        p_value(101, 100, cal)
    with pytest.raises(ValueError, match="level"):
        assess(50, 100, cal, level=0.0)
    with pytest.raises(ValueError, match="older ipguard"):
        Calibration.from_dict({"alpha": 1.0, "beta": 20816.0, "negatives": 2, "mean_matching_rate": 0.0,
                               "max_matching_rate": 0.0, "level": 0.01})


def test_p_value_is_the_smallest_level_whose_rule_calls_it_pirated() -> None:
    """p(x) <= alpha exactly when U_{s alpha}(x) <= (1 - s) alpha, with U the bound over the grid points
    whose (widened) deviance is within z_{1 - s alpha}^2: the closed form against the rule itself."""
    from scipy import special

    from ipguard.stats import _grid, deviance, negatives_loglik, tail_table

    negatives, n, share = [20, 25, 30, 36, 28, 22, 18, 33, 24, 27], 100, 0.5
    cal = fit_calibration(negatives, n, nuisance=share)
    dev = deviance(negatives_loglik(negatives, n))
    a, b, _ = _grid()
    for alpha in (0.05, 0.01, 1e-3, 1e-4):
        inside = dev <= special.ndtri(1 - share * alpha) ** 2
        bound = tail_table(n, a[inside], b[inside]).max(axis=0)
        for x in range(1, n + 1):
            rule = bound[x] <= (1 - share) * alpha
            p = p_value(x, n, cal)
            if abs(p - alpha) > 1e-9 * alpha:  # exactly at the boundary either answer is right
                assert (p <= alpha) == rule, (alpha, x, p, bound[x])


def test_report_judges_each_negative_without_it_and_the_rest_with_all() -> None:
    """The leave-one-out wiring of calibrate_table: a negative's p-value comes from the others only."""
    import pandas as pd

    from ipguard.report import calibrate_table

    negatives = [8, 12, 5, 10, 9, 7, 11, 6, 13, 9]
    rows = [{"method": "m", "suspect": f"neg{i}", "kind": "negative", "family": "f", "matches": m, "n": 100}
            for i, m in enumerate(negatives)]
    rows += [{"method": "m", "suspect": "copy", "kind": "positive", "family": "ft", "matches": 95, "n": 100},
             {"method": "m", "suspect": "owner", "kind": "owner", "family": "owner", "matches": 100, "n": 100}]
    verdicts, cals = calibrate_table(pd.DataFrame(rows), 0.01)
    assert cals["m"].matches == tuple(negatives)
    assert list(cals["m"].models) == [f"neg{i}" for i in range(len(negatives))]
    by = verdicts.set_index("suspect")
    for i, m in enumerate(negatives):
        rest = negatives[:i] + negatives[i + 1:]
        assert by.at[f"neg{i}", "p_value"] == p_value(m, 100, fit_calibration(rest, 100))
    assert by.at["copy", "p_value"] == p_value(95, 100, cals["m"])
    assert by.at["copy", "verdict"] == "pirated" and by.at["owner", "verdict"] == "pirated"
    assert set(verdicts["verdict"]) <= {"pirated", "independent", "inconclusive"}
    assert (verdicts["reason"].str.len() > 0).all()


def test_combined_verdict_pays_for_the_number_of_sets() -> None:
    from ipguard.stats import Assessment, combine_assessments

    ind = Assessment(0.4, "independent", "")
    strong = Assessment(0.001, "pirated", "")
    weak = Assessment(0.008, "pirated", "")  # pirated alone, not after x 3
    a = combine_assessments({"a": strong, "b": ind, "c": ind}, 0.01)
    assert a.verdict == "pirated" and a.p_value == pytest.approx(0.003) and a.reason.startswith("a: p = 0.001")
    b = combine_assessments({"a": weak, "b": ind, "c": ind}, 0.01)
    assert b.verdict == "inconclusive" and b.p_value == pytest.approx(0.024) and "x 3 sets = 0.024 > 0.01" in b.reason
    c = combine_assessments({"a": ind, "b": ind}, 0.01)
    assert c.verdict == "independent" and c.p_value == pytest.approx(0.8)
    d = combine_assessments({"a": ind, "b": Assessment(math.nan, "inconclusive", "no other negative")}, 0.01)
    assert d.verdict == "inconclusive" and d.p_value == pytest.approx(0.8) and "b: inconclusive" in d.reason
    # A p below the level without the set's own "pirated" (a negative matches as much) stays short of pirated.
    e = combine_assessments({"a": Assessment(0.0001, "inconclusive", "a negative matches as much"), "b": ind}, 0.01)
    assert e.verdict == "inconclusive"
    with pytest.raises(ValueError, match="at least one"):
        combine_assessments({}, 0.01)


def test_verdicts_at_n_say_how_many_queries_a_verdict_needs() -> None:
    from ipguard.stats import verdicts_at_n

    rng = np.random.default_rng(3)
    rates = rng.beta(2, 8, size=20)  # independents matching ~20 % of the points
    at = {}
    for n in (5, 20, 100):
        negatives = [int(round(r * n)) for r in rates]
        positives = [n, int(0.9 * n), int(0.3 * n)]
        at[n] = verdicts_at_n(negatives, positives, n, 0.01)
        assert at[n]["floor_p"] == pytest.approx(p_value(n, n, fit_calibration(negatives, n, 0.01)))
    # Five points cannot convict even a perfect match; a hundred convict it and the 90 % copy.
    assert at[5]["owner_verdict"] != "pirated" and at[5]["positives_pirated"] == 0.0
    assert at[100]["owner_verdict"] == "pirated" and at[100]["positives_pirated"] == pytest.approx(2 / 3)
    assert at[100]["floor_p"] < at[20]["floor_p"] < at[5]["floor_p"]


# Negatives of two kinds: models unlike the owner match about 30 % of its points; the owner's own
# architecture and recipe on its own data (a near-twin) match more. The numbers are fgsm's on the
# cifar10_cpu zoo: 31 negatives at 26-38 %, two twins at 50 % and 61 %.
UNLIKE = [31, 38, 38, 26, 31, 29, 30, 34, 26, 34, 34, 29, 32, 27, 27, 30, 31, 29, 31, 30, 32, 33, 33, 30, 34, 27,
          30, 29, 31, 29, 32]


def test_a_null_that_calls_one_of_its_own_negatives_pirated_cannot_call_anything_pirated() -> None:
    from ipguard.stats import worst_negative

    names = [f"other{i}" for i in range(len(UNLIKE))] + ["twin_b", "twin_a"]
    cal = fit_calibration(UNLIKE + [50, 61], 100, models=names)
    p, who = cal.worst_negative
    assert who == "twin_a" and p <= 0.01
    assert worst_negative(UNLIKE + [50, 61], 100) == (p, len(UNLIKE) + 1)
    assert p == p_value(61, 100, fit_calibration(UNLIKE + [50], 100))
    copy = assess(95, 100, cal)
    assert copy.p_value <= 1e-4 and copy.verdict == "inconclusive"
    assert "twin_a" in copy.reason and "pirated" in copy.reason
    assert cal.to_dict()["worst_negative"] == "twin_a"
    # Left out in turn (what the report does), the second twin is judged by a null holding the
    # first, which that null would itself call pirated: not pirated either.
    loo = leave_one_out(UNLIKE + [50, 61], 100, models=names)
    assert loo[-1] is not None and loo[-1].p_value <= 0.01 and loo[-1].verdict == "inconclusive"
    assert "twin_b" in loo[-1].reason
    assert all(a is not None and a.verdict != "pirated" for a in loo)


def test_negatives_of_one_kind_pass_the_self_check() -> None:
    cal = fit_calibration(UNLIKE, 100)
    p, _ = cal.worst_negative
    assert p > 0.05
    assert assess(95, 100, cal).verdict == "pirated"
    assert math.isnan(fit_calibration([40], 100).worst_negative[0])


def test_the_vectorised_rule_takes_the_self_check() -> None:
    from ipguard.stats import _curve, _key, pirated_counts

    for negatives in (UNLIKE, UNLIKE + [50, 61]):
        cal = fit_calibration(negatives, 100)
        curve, holds = _curve(_key(negatives), 100, cal.nuisance, 100)
        called = pirated_counts(curve, 100, cal.negatives, holds, cal.max_matching_rate, 0.01, cal.worst_negative[0])
        assert [x for x in range(101) if called[x]] == [x for x in range(101) if assess(x, 100, cal).verdict == "pirated"]
        assert called.any() == (negatives is UNLIKE)
