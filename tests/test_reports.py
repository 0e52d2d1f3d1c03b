"""The reports of the tiny experiment: the dev/test protocol, intervals, the choice made on dev, the results index."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ipguard.evaluate import bootstrap_intervals, split_suspects, summarize
from ipguard.report_index import build


def test_index_lists_every_experiment_and_method(workspace: Path) -> None:
    text = build(workspace / "reports")
    metrics = json.loads((workspace / "reports/tiny/metrics.json").read_text())["methods"]
    assert "dvc exp run -S experiment=tiny" in text
    for method, m in metrics.items():
        assert f"| {method} | {m['overall']['aruc']:.3f} [{m['overall']['aruc_lo']:.2f}, {m['overall']['aruc_hi']:.2f}] |" in text
    cost = json.loads((workspace / "reports/tiny/generation_cost.json").read_text())
    assert cost["ipguard"]["converged_share"] == 1.0 and cost["ipguard"]["n"] == 30
    assert f"| tiny | ipguard | 30 | {cost['ipguard']['seconds']:.3f} |" in text
    effects = json.loads((workspace / "reports/tiny/effects.json").read_text())
    assert f"| tiny | ipguard | {effects['chosen']['ipguard']['k']:.3f} |" in text


def test_reported_numbers_are_those_of_the_test_part(workspace: Path) -> None:
    out = workspace / "reports/tiny"
    table = pd.read_csv(out / "matching_rates.csv")
    info = table.drop_duplicates("suspect")
    # The parts are split_suspects' of the suspects' kinds and families; the owner is in neither.
    scored = info[info["kind"] != "owner"]
    expected = split_suspects(zip(scored["suspect"], scored["kind"], scored["family"]), 0.5, 0)
    assert dict(zip(scored["suspect"], scored["part"])) == expected
    assert set(info[info["kind"] == "owner"]["part"]) == {"none"}
    metrics = json.loads((out / "metrics.json").read_text())
    df = table[(table["method"] == "ipguard") & (table["part"] == "test")]
    pos = df[df["kind"] == "positive"]["matching_rate"]
    neg = df[df["kind"] == "negative"]["matching_rate"]
    overall = metrics["methods"]["ipguard"]["overall"]
    assert overall["aruc"] == pytest.approx(summarize(pos, neg)["aruc"])
    assert overall["tpr_fpr_bound"] == 0.0  # a handful of negatives resolve no FPR above 0
    ci = bootstrap_intervals(pos, neg, metrics["max_fpr"], 1000, 0.95, 0)
    assert overall["aruc_lo"] == pytest.approx(ci["aruc_lo"]) and overall["auc_hi"] == pytest.approx(ci["auc_hi"])
    text = (out / "report.md").read_text()
    assert f"TPR@FPR=0 (N={len(neg)})" in text
    assert "## Overall, per fingerprint method (test part)" in text
    # Plot tables hold the test part only.
    rates = pd.read_csv(out / "plots/matching_rates/ipguard.csv")
    assert set(rates["suspect"]) == set(df["suspect"]) | {"owner"}


def test_effects_choose_on_dev_and_report_test(workspace: Path) -> None:
    out = workspace / "reports/tiny"
    effects = json.loads((out / "effects.json").read_text())
    grid = [r for r in effects["grid"] if r["method"] == "ipguard"]
    assert {(r["k"], r["n"]) for r in grid} == {(k, n) for k in (0.3, 3.0) for n in (10, 20, 30)}
    chosen = effects["chosen"]["ipguard"]
    # k is chosen on the whole set (n = 30), by dev ARUC; ties go to the larger k.
    full = [r for r in grid if r["n"] == 30]
    best = max(r["dev"]["aruc"] for r in full)
    assert chosen["n"] == 30 and chosen["dev"]["aruc"] == best
    assert chosen["k"] == max(r["k"] for r in full if r["dev"]["aruc"] == best)
    at = next(r for r in grid if (r["k"], r["n"]) == (chosen["k"], chosen["n"]))
    assert chosen["test"]["aruc"] == at["test"]["aruc"]
    assert chosen["test"]["aruc_lo"] <= chosen["test"]["aruc"] <= chosen["test"]["aruc_hi"]
    assert set(effects["split"]["dev"]["positive"]).isdisjoint(effects["split"]["test"]["positive"])
    text = (out / "effects.md").read_text()
    assert "## Chosen on dev, measured on test" in text and "## Dev part: every setting" in text
    # What n buys: calibrated at each n on every negative; the whole set gives a lower floor of p
    # than its smallest prefix.
    n_rows = [r for r in effects["n"] if r["method"] == "ipguard"]
    floors = [r["verdicts"]["floor_p"] for r in sorted(n_rows, key=lambda r: r["n"])]
    assert len(floors) >= 2 and floors[-1] < floors[0]
    assert all(0.0 <= (r["verdicts"]["positives_pirated"] or 0.0) <= 1.0 for r in n_rows)
    assert "## Queries for a verdict at level 0.01" in text
    curve = pd.read_csv(out / "plots/effects_k/ipguard.csv")
    assert list(curve["k"]) == [0.3, 3.0] and "ARUC dev" in curve and "ARUC test" in curve


def test_the_combined_verdict_is_bonferroni_over_its_sets(workspace: Path) -> None:
    """evaluate.combine (issue 11): one verdict per suspect from several sets, min(1, M x min p)."""
    from ipguard.stats import Assessment, combine_assessments

    out = workspace / "reports/tiny"
    verdicts = pd.read_csv(out / "verdicts.csv")
    combined = verdicts[verdicts["method"] == "combined"].set_index("suspect")
    singles = verdicts[verdicts["method"].isin(["ipguard", "akh"])]
    assert set(combined.index) == set(singles["suspect"])
    for suspect, df in singles.groupby("suspect"):
        per = {r["method"]: Assessment(r["p_value"], r["verdict"], r["reason"]) for _, r in df.iterrows()}
        expected = combine_assessments(per, 0.01)
        assert combined.at[suspect, "p_value"] == pytest.approx(min(1.0, 2 * df["p_value"].min()), rel=1e-5)  # csv: 6 digits
        assert combined.at[suspect, "verdict"] == expected.verdict
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["combined"]["methods"] == ["ipguard", "akh"]
    test = combined[combined["part"] == "test"]
    assert metrics["combined"]["positives_called_pirated"] == pytest.approx((test[test["kind"] == "positive"]["verdict"] == "pirated").mean())
    assert "aruc" not in metrics["combined"]["overall"] and 0.0 <= metrics["combined"]["overall"]["auc"] <= 1.0
    assert "## Combined fingerprint (test part): ipguard, akh" in (out / "report.md").read_text()


def test_index_gives_the_wall_time_of_a_recorded_run_and_the_combined_row(workspace: Path, tmp_path: Path) -> None:
    import shutil

    reports = tmp_path / "reports"
    shutil.copytree(workspace / "reports", reports)
    row = next(line for line in build(reports).splitlines() if line.startswith("| tiny |"))
    assert row.rstrip().endswith("| – |")  # no run.json: no wall time
    (reports / "tiny" / "run.json").write_text(json.dumps(
        {"wall_seconds": 5400.0, "command": "dvc exp run -S experiment=tiny", "commit": "abc1234", "machine": "2 CPU cores",
         "note": "Measured on quiet cores."}))
    text = build(reports)
    assert "| 90.0 min |" in text
    assert "`tiny`: dvc exp run -S experiment=tiny at abc1234 on 2 CPU cores, 90.0 min. Measured on quiet cores." in text
    (reports / "tiny" / "run.json").write_text(json.dumps(
        {"wall_seconds": 600.0, "full": False, "command": "dvc repro", "commit": "abc1234", "machine": "2 CPU cores"}))
    text = build(reports)
    assert next(line for line in text.splitlines() if line.startswith("| tiny |")).rstrip().endswith("| – |")
    assert "10.0 min (not a full run)." in text
    auc = json.loads((reports / "tiny" / "metrics.json").read_text())["combined"]["overall"]["auc"]
    assert any(line.startswith("| combined |") and f"{auc:.3f}" in line for line in text.splitlines())


def _rates(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    """A matching-rate table of one set from (suspect, kind, part, family, matching rate)."""
    return pd.DataFrame([{"method": "m", "suspect": s, "kind": k, "part": p, "family": f, "matching_rate": r}
                         for s, k, p, f, r in rows])


def test_target_judges_each_family_on_its_test_copies() -> None:
    """evaluate.target (issue 11): per family of the test part, excluded copies left out, unmeasured said."""
    from ipguard.config import TargetCfg
    from ipguard.report import target_metrics, target_section

    table = _rates([
        ("owner", "owner", "none", "owner", 1.0),
        ("n1", "negative", "test", "a", 0.5), ("n2", "negative", "test", "b", 0.7), ("n3", "negative", "dev", "c", 0.99),
        ("ft", "positive", "test", "ftal", 0.9),            # above every test negative: AUC 1
        ("p30", "positive", "test", "prune", 0.6),          # between them: AUC 0.5
        ("p90", "positive", "test", "prune", 0.1),          # excluded
        ("d1", "positive", "test", "distillation", 0.8), ("d2", "positive", "dev", "distillation", 0.2),
        ("x1", "positive", "dev", "extraction", 0.9),       # no test copy: unmeasured
    ])
    combined = table[table["kind"] != "owner"].assign(method="combined", p_value=lambda d: 1.0 - d["matching_rate"])
    targets = [TargetCfg("post", 0.99, ["ftal", "prune", "quantization"]), TargetCfg("students", 0.97, ["distillation", "extraction"])]
    out = target_metrics(table, combined, targets, ["p90"])
    post, students = out
    assert [f["family"] for f in post["families"]] == ["ftal", "prune"]  # quantization is not built
    assert post["families"][1]["copies"] == 1 and post["families"][1]["auc"]["m"] == pytest.approx(0.5)
    assert post["families"][1]["auc_combined"] == pytest.approx(0.5)
    assert post["met_by_combined"] is False and post["met_by"] == []
    assert students["families"][0]["auc"]["m"] == 1.0 and students["unmeasured"] == ["extraction"]
    assert students["met_by_combined"] is True and students["met_by"] == ["m"]
    text = target_section(out, ["p90"], 2)
    assert "prune at 0.500, 0.490 short" in text and "not judged (no test copy): extraction" in text
    # Without the exclusion the 90 % pruning counts, and drags the family down.
    assert target_metrics(table, combined, targets, [])[0]["families"][1]["auc"]["m"] == pytest.approx(0.25)


def test_target_section_of_the_tiny_report(workspace: Path) -> None:
    out = workspace / "reports/tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "matching_rates.csv")
    test = table[(table["part"] == "test") & (table["method"] == "ipguard")]
    families = set(test.loc[test["kind"] == "positive", "family"])
    judged = {f: v for t in metrics["target"].values() for f, v in t["families"].items() if v["copies"]}
    assert judged and set(judged) <= families
    for family, v in judged.items():
        pos = test[(test["kind"] == "positive") & (test["family"] == family)]["matching_rate"]
        neg = test[test["kind"] == "negative"]["matching_rate"]
        assert v["auc"]["ipguard"] == pytest.approx(((pos.values[:, None] > neg.values).mean()
                                                     + 0.5 * (pos.values[:, None] == neg.values).mean()))
    assert "## Target (test part)" in (out / "report.md").read_text()
    index = build(workspace / "reports")
    for name, t in metrics["target"].items():
        assert f"| tiny | {name} (AUC >= {t['auc']:g}) |" in index
