"""Metrics on hand-made matching rates whose answers are known; bootstrap intervals; the dev/test split."""

from __future__ import annotations

import numpy as np
import pytest

from ipguard.evaluate import (
    _batch_metrics,
    aruc,
    bootstrap_intervals,
    fpr_bound,
    robustness,
    roc_auc,
    split_suspects,
    summarize,
    tpr_at_fpr,
    tpr_label,
    uniqueness,
)


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


def test_tpr_label_says_what_the_negatives_resolve() -> None:
    assert fpr_bound(0.01, 21) == 0.0 and tpr_label(0.01, 21) == "TPR@FPR=0 (N=21)"
    assert fpr_bound(0.01, 100) == pytest.approx(0.01) and fpr_bound(0.01, 250) == pytest.approx(0.008)
    assert tpr_label(0.01, 100) == "TPR@FPR<=0.01 (N=100)"
    s = summarize([1.0, 0.9], [0.1, 0.2, 0.3])
    assert s["tpr_fpr_bound"] == 0.0


def test_batched_metrics_equal_the_scalar_ones() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        pos = np.round(rng.uniform(0.2, 1.0, (4, rng.integers(1, 12))), 2)
        neg = np.round(rng.uniform(0.0, 0.8, (4, rng.integers(1, 30))), 2)
        for max_fpr in (0.0, 0.01, 0.1, 0.34, 1.0):
            got = _batch_metrics(pos, neg, max_fpr)
            for row in range(4):
                assert got["aruc"][row] == pytest.approx(aruc(pos[row], neg[row]), abs=1e-12)
                assert got["auc"][row] == pytest.approx(roc_auc(pos[row], neg[row]), abs=1e-12)
                assert got["tpr_at_fpr"][row] == pytest.approx(tpr_at_fpr(pos[row], neg[row], max_fpr), abs=1e-12)


def test_bootstrap_interval_holds_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.4, 1.0, 15), rng.uniform(0.0, 0.7, 21)
    point = summarize(pos, neg)
    ci = bootstrap_intervals(pos, neg, 0.01, resamples=1000, seed=0)
    for key in ("aruc", "auc", "tpr_at_fpr"):
        assert ci[f"{key}_lo"] <= point[key] <= ci[f"{key}_hi"], key
        assert ci[f"{key}_lo"] < ci[f"{key}_hi"], key  # overlapping samples: a real interval
    assert bootstrap_intervals(pos, neg, 0.01, resamples=1000, seed=0) == ci
    assert bootstrap_intervals(pos, neg, 0.01, resamples=1000, seed=1) != ci
    # Perfectly separated samples stay separated in every resample.
    sep = bootstrap_intervals([0.9, 0.95, 1.0], [0.1, 0.2], resamples=200, seed=0)
    assert sep["auc_lo"] == sep["auc_hi"] == 1.0 and sep["tpr_at_fpr_lo"] == 1.0
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals(pos, neg, confidence=1.0)


def _digits_like() -> list[tuple[str, str, str]]:
    """The digits experiment's suspects: 15 copies in 6 families, 21 negatives in 6 families."""
    out = [(f"prune_{10 * i}", "positive", "prune") for i in range(1, 10)]
    out += [(n, "positive", n) for n in ("ftll", "ftal", "rtll", "rtal")]
    out += [("int8", "positive", "quantization"), ("float16", "positive", "quantization")]
    for arch in ("cnn", "mlp", "lenet"):
        out += [(f"{arch}_s{s}_owner", "negative", f"{arch}/owner") for s in range(1, 5)]
        out += [(f"{arch}_s{s}_other", "negative", f"{arch}/other") for s in range(5, 8)]
    return out


def test_split_is_a_seeded_disjoint_cover_that_keeps_families() -> None:
    suspects = _digits_like()
    parts = split_suspects(suspects, 0.5, seed=0)
    assert set(parts) == {s for s, _, _ in suspects} and set(parts.values()) == {"dev", "test"}
    # Deterministic, and independent of the input's order.
    assert split_suspects(list(reversed(suspects)), 0.5, seed=0) == parts
    assert any(split_suspects(suspects, 0.5, seed=s) != parts for s in range(1, 5))
    for kind in ("positive", "negative"):
        counts = {p: sum(1 for s, k, _ in suspects if k == kind and parts[s] == p) for p in ("dev", "test")}
        assert counts["dev"] > 0 and counts["test"] > 0, kind
        assert abs(counts["dev"] - counts["test"]) <= 4, (kind, counts)
    families: dict[tuple[str, str], set[str]] = {}
    for s, kind, family in suspects:
        families.setdefault((kind, family), set()).add(parts[s])
    for (kind, family), seen in families.items():
        size = sum(1 for _, k, f in suspects if (k, f) == (kind, family))
        if kind == "negative":
            assert len(seen) == 1, f"negative family {family} straddles the parts"
        elif size >= 2:
            assert seen == {"dev", "test"}, f"positive family {family} is missing from a part"


def test_split_edge_cases() -> None:
    # One negative family only: its members are divided (both parts need negatives).
    parts = split_suspects([("a", "negative", "lite"), ("b", "negative", "lite"), ("p", "positive", "ft"),
                            ("q", "positive", "prune")], 0.5, seed=0)
    assert {parts["a"], parts["b"]} == {"dev", "test"} and {parts["p"], parts["q"]} == {"dev", "test"}
    # A single positive cannot be in both parts; nothing breaks.
    assert set(split_suspects([("p", "positive", "ft"), ("n", "negative", "x")], 0.3, seed=2)) == {"p", "n"}
    # An uneven fraction still leaves a non-empty part of each kind.
    parts = split_suspects(_digits_like(), 0.9, seed=0)
    for kind in ("positive", "negative"):
        assert {parts[s] for s, k, _ in _digits_like() if k == kind} == {"dev", "test"}
    with pytest.raises(ValueError, match="dev_fraction"):
        split_suspects(_digits_like(), 1.0)
    with pytest.raises(ValueError, match="kind"):
        split_suspects([("owner", "owner", "cnn")])
