"""Tables and figures from the matching-rate table (pure: DataFrames in, text and figures out)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ipguard.config import BootstrapCfg, SplitCfg, TargetCfg
from ipguard.evaluate import bootstrap_intervals, robustness, roc_auc, roc_curve, summarize, tpr_label, uniqueness
from ipguard.stats import (
    Assessment,
    Calibration,
    ScoreCalibration,
    assess,
    assess_score,
    combine_assessments,
    fit_calibration,
    fit_score_calibration,
    leave_one_out,
    leave_one_out_scores,
)

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 201), 6)


def split_kinds(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Positive and negative rows of one method's matching rates."""
    return df[df["kind"] == "positive"], df[df["kind"] == "negative"]


def in_part(table: pd.DataFrame, part: str | None) -> pd.DataFrame:
    """The rows of the suspects in ``part`` (``dev`` or ``test``) and the owner's rows.

    ``None``, or a table without a ``part`` column (one written before the dev/test split), gives
    the whole table.
    """
    if part is None or "part" not in table.columns:
        return table
    return table[(table["part"] == part) | (table["kind"] == "owner")]


def _summary(pos: pd.Series, neg: pd.Series, max_fpr: float, bootstrap: BootstrapCfg | None) -> dict[str, float]:
    out = summarize(pos, neg, max_fpr)
    if bootstrap is not None:
        out.update(bootstrap_intervals(pos, neg, max_fpr, bootstrap.resamples, bootstrap.confidence, bootstrap.seed))
    return out


def method_metrics(table: pd.DataFrame, max_fpr: float, part: str | None = "test",
                   bootstrap: BootstrapCfg | None = None) -> dict[str, dict[str, Any]]:
    """Per fingerprint method: ARUC, AUC, TPR at ``max_fpr`` overall and per positive family,
    on the suspects of ``part`` (``test``: what is reported; ``dev``: what settings are chosen on).

    With ``bootstrap``, each summary also holds percentile intervals (``aruc_lo``, ``aruc_hi``, ...;
    :func:`ipguard.evaluate.bootstrap_intervals`). A family whose copies all lie in the other
    part has no entry.
    """
    out: dict[str, dict[str, Any]] = {}
    for method, df in in_part(table, part).groupby("method", sort=False):
        pos, neg = split_kinds(df)
        owner = df[df["kind"] == "owner"]["matching_rate"]
        entry: dict[str, Any] = {"owner_matching_rate": float(owner.iloc[0]) if len(owner) else None}
        if len(pos) and len(neg):
            entry["overall"] = _summary(pos["matching_rate"], neg["matching_rate"], max_fpr, bootstrap)
            entry["families"] = {
                family: _summary(fam["matching_rate"], neg["matching_rate"], max_fpr, bootstrap)
                for family, fam in pos.groupby("family", sort=False)
            }
        out[str(method)] = entry
    return out


def calibrate_table(table: pd.DataFrame, level: float) -> tuple[pd.DataFrame, dict[str, Calibration | ScoreCalibration]]:
    """p-values and verdicts (with the reason) for every row, and each method's calibration on all its negatives.

    A negative's own verdict comes from a calibration fitted on the other negatives
    (leave-one-out), so the share of negatives called pirated is an honest false-positive rate.
    Sets scored by counts (``score`` ``match``, or no ``score`` column) get the beta-binomial
    calibration; SAC's continuous scores the beta one (:func:`ipguard.stats.fit_score_calibration`).
    """
    rows, calibrations = [], {}
    for method, df in table.groupby("method", sort=False):
        neg = df[df["kind"] == "negative"]
        if neg.empty:
            continue
        models = neg["suspect"].astype(str).tolist()
        if "score" in df.columns and str(df["score"].iloc[0]) != "match":
            scores = neg["matching_rate"].astype(float).tolist()
            cal: Calibration | ScoreCalibration = fit_score_calibration(scores, level, models=models)
            loo = dict(zip(neg.index, leave_one_out_scores(scores, level, models=models)))

            def judge(row: pd.Series, cal: Any = cal) -> Assessment:
                return assess_score(float(row["matching_rate"]), cal)
        else:
            n = int(df["n"].iloc[0])
            cal = fit_calibration(neg["matches"].astype(int).tolist(), n, level, models=models)
            loo = dict(zip(neg.index, leave_one_out(neg["matches"].astype(int).tolist(), n, level, models=models)))

            def judge(row: pd.Series, cal: Any = cal) -> Assessment:
                return assess(int(row["matches"]), int(row["n"]), cal)
        calibrations[str(method)] = cal
        for idx, row in df.iterrows():
            a = loo[idx] if idx in loo else judge(row)
            if a is None:
                a = Assessment(float("nan"), "inconclusive", "no other negative to calibrate on")
            rows.append({**row.to_dict(), "p_value": a.p_value, "verdict": a.verdict, "reason": a.reason})
    return pd.DataFrame(rows), calibrations


COMBINED = "combined"
SUSPECT_COLUMNS = ("suspect", "kind", "part", "family", "arch", "storage", "lineage", "test_accuracy")


def combined_verdicts(verdicts: pd.DataFrame, methods: list[str], level: float) -> pd.DataFrame:
    """One row per suspect (``method`` = ``combined``): the verdict of :func:`combine_assessments`
    over the rows of ``methods``, and its p-value. Negatives combine their leave-one-out verdicts,
    so the share of them called pirated stays an honest false-positive rate."""
    rows = []
    chosen = verdicts[verdicts["method"].isin(methods)]
    for _, df in chosen.groupby("suspect", sort=False):
        per = {str(r["method"]): Assessment(float(r["p_value"]), str(r["verdict"]), str(r["reason"])) for _, r in df.iterrows()}
        a = combine_assessments(per, level)
        first = df.iloc[0]
        rows.append({**{c: first[c] for c in SUSPECT_COLUMNS if c in df.columns}, "method": COMBINED,
                     "p_value": a.p_value, "verdict": a.verdict, "reason": a.reason})
    return pd.DataFrame(rows)


def combined_metrics(combined: pd.DataFrame, max_fpr: float, part: str | None = "test",
                     bootstrap: BootstrapCfg | None = None) -> dict[str, Any]:
    """AUC and TPR at ``max_fpr`` of the combined verdict's score 1 - p, overall and per family,
    and its verdict shares, on the suspects of ``part``. No ARUC: the score is not a matching rate."""
    df = in_part(combined, part).assign(score=lambda d: 1.0 - d["p_value"].fillna(1.0))
    pos, neg = split_kinds(df)
    drop = {"aruc", "aruc_lo", "aruc_hi", "min_positive_mr", "max_negative_mr"}

    def summary(p: pd.Series) -> dict[str, float]:
        return {k: v for k, v in _summary(p, neg["score"], max_fpr, bootstrap).items() if k not in drop}

    out: dict[str, Any] = {**verdict_shares(df)}
    if len(pos) and len(neg):
        out["overall"] = summary(pos["score"])
        out["families"] = {family: summary(fam["score"]) for family, fam in pos.groupby("family", sort=False)}
    return out


def combined_section(combined: Mapping[str, Any], methods: list[str], metrics: Mapping[str, Mapping[str, Any]], fpr_label: str) -> str:
    """Markdown: the combined verdict against the best single method of the combination, per family."""
    lines = [f"\n## Combined fingerprint (test part): {', '.join(methods)}\n",
             f"One verdict from the {len(methods)} sets: Bonferroni's min(1, {len(methods)} x min p) (valid whatever "
             "the dependence between the sets), pirated only where a set that says pirated keeps p at most the level "
             "after the factor. Its score for AUC and TPR is 1 - p (no ARUC: not a matching rate); negatives "
             "combine their leave-one-out verdicts. Best single = the highest AUC among the combined sets.\n"]
    rows = []
    families = ["overall", *combined.get("families", {})]
    for family in families:
        c = combined.get("overall", {}) if family == "overall" else combined["families"][family]
        singles = {m: (metrics[m].get("overall", {}) if family == "overall" else metrics[m].get("families", {}).get(family, {})).get("auc")
                   for m in methods if m in metrics}
        singles = {m: v for m, v in singles.items() if v is not None}
        best = max(singles, key=lambda m: singles[m]) if singles else None
        rows.append({"family": family, "AUC combined": with_interval(c, "auc"), fpr_label: with_interval(c, "tpr_at_fpr"),
                     "best single": best, "AUC best single": singles.get(best) if best else None,
                     "combined >= best": (c.get("auc", float("nan")) >= singles[best]) if best else None})
    lines.append(md_table(rows))  # its verdict shares are the `combined` row of the verdicts table
    return "\n".join(lines)


def target_metrics(table: pd.DataFrame, combined: pd.DataFrame | None, targets: list[TargetCfg],
                   exclude: list[str]) -> list[dict[str, Any]]:
    """Each target's families on the test part: the AUC of the combined verdict (score 1 - p) and
    of every set alone, over the family's test copies (less those named in ``exclude``) against
    every test negative, and which reach the target.

    A family the experiment does not build is left out; one whose copies all lie in the dev part
    is listed with no AUC (``unmeasured``), so a target is never called met on fewer families
    than it names without saying so.
    """
    test = in_part(table, "test")
    test = test[~test["suspect"].isin(exclude)]
    built = set(table.loc[table["kind"] == "positive", "family"])
    comb = None
    if combined is not None and not combined.empty:
        comb = in_part(combined, "test").assign(score=lambda d: 1.0 - d["p_value"].fillna(1.0))
        comb = comb[~comb["suspect"].isin(exclude)]
    methods = [str(m) for m in test["method"].unique()]

    def family_auc(df: pd.DataFrame, family: str, score: str) -> float | None:
        pos, neg = split_kinds(df)
        pos = pos[pos["family"] == family]
        return roc_auc(pos[score], neg[score]) if len(pos) and len(neg) else None

    out = []
    for t in targets:
        families = []
        for family in (f for f in t.families if f in built):
            copies = int(test.loc[(test["kind"] == "positive") & (test["family"] == family), "suspect"].nunique())
            aucs = {m: family_auc(test[test["method"] == m], family, "matching_rate") for m in methods} if copies else {}
            families.append({"family": family, "copies": copies, "auc": {m: v for m, v in aucs.items() if v is not None},
                             "auc_combined": family_auc(comb, family, "score") if comb is not None and copies else None})
        measured = [f for f in families if f["copies"]]
        out.append({
            "name": t.name, "auc": t.auc, "families": families,
            "unmeasured": [f["family"] for f in families if not f["copies"]],
            "met_by_combined": (all(f["auc_combined"] is not None and f["auc_combined"] >= t.auc for f in measured)
                                if measured and comb is not None else None),
            "met_by": [m for m in methods if measured and all(f["auc"].get(m, -1.0) >= t.auc for f in measured)],
        })
    return out


def target_section(targets: list[dict[str, Any]], exclude: list[str], negatives: int) -> str:
    """Markdown: each target's families, the combined verdict's AUC and shortfall, the best set."""
    lines = ["\n## Target (test part)\n",
             f"The AUC each family must reach (`evaluate.target`), over its test copies"
             + (f" (less {', '.join(exclude)})" if exclude else "")
             + f" against the {negatives} test negatives; the combined verdict scores 1 - p. Short = the target "
             "less the AUC, where the AUC falls below it. A family with no test copy cannot be judged here.\n"]
    rows = []
    for t in targets:
        for f in t["families"]:
            best = max(f["auc"], key=lambda m: f["auc"][m]) if f["auc"] else None
            c = f["auc_combined"]
            rows.append({"target": t["name"], "family": f["family"], "copies": f["copies"], "AUC target": t["auc"],
                         "AUC combined": c, "short (combined)": max(0.0, t["auc"] - c) if c is not None else None,
                         "best set": best, "AUC best set": f["auc"][best] if best else None,
                         "sets at target": sum(v >= t["auc"] for v in f["auc"].values()) if f["auc"] else None})
    lines.append(md_table(rows))
    for t in targets:
        measured = [f for f in t["families"] if f["copies"]]
        said = f"- **{t['name']}** (AUC >= {t['auc']:g})"
        if not t["families"]:
            lines.append(f"{said}: this experiment builds no copy of its families; not judged.")
            continue
        if not measured:
            lines.append(f"{said}: no family of it has a test copy; not judged.")
            continue
        if t["met_by_combined"]:
            verdict = "met by the combined verdict"
        elif t["met_by_combined"] is None:
            verdict = "no combined verdict"
        else:
            worst = min((f for f in measured if f["auc_combined"] is not None), key=lambda f: f["auc_combined"], default=None)
            verdict = ("not met by the combined verdict" + (f": {worst['family']} at {worst['auc_combined']:.3f}, "
                       f"{t['auc'] - worst['auc_combined']:.3f} short" if worst else ""))
        sets = ", ".join(t["met_by"]) if t["met_by"] else "none"
        extra = f"; not judged (no test copy): {', '.join(t['unmeasured'])}" if t["unmeasured"] else ""
        lines.append(f"{said}: {verdict}; sets alone that meet it in every family: {sets}{extra}.")
    return "\n".join(lines) + "\n"


def verdict_shares(verdicts: pd.DataFrame) -> dict[str, float]:
    """Shares of positives and of negatives (tested leave-one-out) called pirated, and called inconclusive."""
    out = {}
    for kind, key in (("positive", "positives"), ("negative", "negatives")):
        rows = verdicts[verdicts["kind"] == kind]
        suffix = "_loo" if kind == "negative" else ""
        for v in ("pirated", "inconclusive"):
            out[f"{key}_called_{v}{suffix}"] = float((rows["verdict"] == v).mean()) if len(rows) else float("nan")
    return out


def plot_tables(table: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """The DVC plot files per method: R/U curves, ROC curves and the matching rate of every suspect."""
    rates = {str(m): df[["suspect", "kind", "family", "matching_rate"]] for m, df in table.groupby("method", sort=False)}
    return {"curves": curves(table), "roc": rocs(table), "matching_rates": rates}


def curves(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method: robustness and uniqueness on a grid of thresholds."""
    out = {}
    for method, df in table.groupby("method", sort=False):
        pos, neg = split_kinds(df)
        if len(pos) and len(neg):
            out[str(method)] = pd.DataFrame({
                "threshold": THRESHOLDS,
                "robustness": robustness(pos["matching_rate"], THRESHOLDS),
                "uniqueness": uniqueness(neg["matching_rate"], THRESHOLDS),
            })
    return out


def rocs(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method: the ROC curve with the matching rate as score."""
    out = {}
    for method, df in table.groupby("method", sort=False):
        pos, neg = split_kinds(df)
        if len(pos) and len(neg):
            fpr, tpr = roc_curve(pos["matching_rate"], neg["matching_rate"])
            out[str(method)] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def md_table(rows: list[Mapping[str, Any]]) -> str:
    """A GitHub markdown table from rows of equal keys."""
    if not rows:
        return "_(none)_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def with_interval(summary: Mapping[str, Any], key: str) -> str | None:
    """``0.530 [0.41, 0.62]``: a metric with its bootstrap interval where the summary holds one."""
    value = summary.get(key)
    if value is None:
        return None
    if f"{key}_lo" not in summary:
        return f"{value:.3f}"
    return f"{value:.3f} [{summary[f'{key}_lo']:.2f}, {summary[f'{key}_hi']:.2f}]"


def part_members(table: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """part -> kind -> the suspects in it (``dev`` and ``test``; positives and negatives), in table order."""
    info = table.drop_duplicates("suspect")
    out: dict[str, dict[str, list[str]]] = {}
    for part in ("dev", "test"):
        rows = info[info["part"] == part] if "part" in info.columns else info.iloc[0:0]
        out[part] = {kind: rows[rows["kind"] == kind]["suspect"].astype(str).tolist() for kind in ("positive", "negative")}
    return out


def split_section(table: pd.DataFrame, split: SplitCfg | None, chosen: str) -> str:
    """The report's account of the dev/test protocol: the rule, the suspects of each part, what dev chose."""
    members = part_members(table)
    rule = (f" (`evaluate.split`: dev_fraction {split.dev_fraction:g}, seed {split.seed})" if split is not None else "")
    text = [
        "## Dev and test parts\n",
        f"The positives and negatives are split{rule} into a **dev** part, on which settings are chosen, "
        "and a **test** part, on which every number of this report is computed (the owner is in neither). "
        "Negatives are kept whole per family (architecture and training data, or author); positives of a "
        "post-processing family with several members are divided between the parts, families of one member "
        "go whole to one part, so a family may be missing from the test tables below.\n",
    ]
    rows = [{"part": part, "positives": len(m["positive"]), "negatives": len(m["negative"]),
             "positive suspects": ", ".join(m["positive"]) or "–", "negative suspects": ", ".join(m["negative"]) or "–"}
            for part, m in members.items()]
    text.append(md_table(rows))
    text.append(f"\nChosen on dev: {chosen}\n")
    return "\n".join(text)


def settings_table(costs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each set's settings (from its fingerprint file's config): what the report's numbers are for."""
    rows = []
    for method, c in costs.items():
        cfg = c.get("config", {})
        rows.append({"set": method, "method": cfg.get("method"), "n": cfg.get("n"), "k": cfg.get("k"),
                     "start": cfg.get("start"), "target": cfg.get("target"), "pool": cfg.get("pool")})
    return rows


EVASION_FAMILY = "evasion"
EVASION_ACCURACY_POINTS = 2.0  # issue 12: evasions that cost the thief at most this much accuracy


def evasion_section(table: pd.DataFrame, verdicts: pd.DataFrame | None, level: float,
                    max_cost: float = EVASION_ACCURACY_POINTS) -> str:
    """Which fingerprints survive input transformations (family ``evasion``): per evaded copy, the
    accuracy it costs the thief and, per method, its matching rate and verdict; then, per method,
    the share of the evasions that cost at most ``max_cost`` points still called pirated.

    Every part (dev and test) is shown: no setting is chosen on these rows.
    """
    ev = table[table["family"] == EVASION_FAMILY]
    owner = table[table["kind"] == "owner"]
    if ev.empty or owner.empty:
        return ""
    owner_acc = float(owner["test_accuracy"].iloc[0])
    verdict_of: dict[tuple[str, str], str] = {}
    if verdicts is not None and not verdicts.empty:
        verdict_of = {(r.method, r.suspect): r.verdict for r in verdicts.itertuples()}
    short = {"pirated": "P", "independent": "I", "inconclusive": "?"}
    methods = list(dict.fromkeys(ev["method"]))
    rows, cheap = [], set()
    for suspect, df in ev.groupby("suspect", sort=False):
        cost = 100 * (owner_acc - float(df["test_accuracy"].iloc[0]))
        if cost <= max_cost:
            cheap.add(suspect)
        row: dict[str, Any] = {"copy": suspect, "part": df["part"].iloc[0] if "part" in df else None,
                               "accuracy cost (points)": round(cost, 2)}
        for r in df.itertuples():
            v = verdict_of.get((r.method, suspect))
            row[r.method] = f"{r.matching_rate:.2f}" + (f" {short.get(v, v)}" if v else "")
        rows.append(row)
    summary = []
    for method in methods:
        kept = [verdict_of.get((method, s)) == "pirated" for s in sorted(cheap)]
        summary.append({"method": method, f"evasions within {max_cost:g} points": len(kept),
                        "still called pirated": f"{sum(kept)}/{len(kept)}" if kept else "-"})
    return "\n".join([
        "\n## Evasions: the copy behind an input transformation\n",
        f"The owner's copy answers through JPEG compression, Gaussian noise, bit-depth reduction, a median filter or "
        f"random resizing and padding (`postprocess/evasions.yaml`). Accuracy cost = the owner's test accuracy minus "
        f"the evaded copy's; each cell is the matching rate (SAC: similarity) and the verdict at level {level:g} "
        "(P pirated, I independent, ? inconclusive). Dev and test copies alike: nothing is chosen on them.\n",
        md_table(rows),
        f"\nFingerprints that survive the evasions a thief can afford (accuracy cost at most {max_cost:g} points):\n",
        md_table(summary),
    ])


def markdown_report(
    table: pd.DataFrame, metrics: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
    experiment: str, description: str, max_fpr: float,
    verdicts: pd.DataFrame | None = None, calibrations: Mapping[str, Calibration | ScoreCalibration] | None = None,
    level: float = 0.01,
    split: SplitCfg | None = None, bootstrap: BootstrapCfg | None = None,
    combined: Mapping[str, Any] | None = None, combined_methods: list[str] | None = None,
    targets: list[dict[str, Any]] | None = None, target_exclude: list[str] | None = None,
) -> str:
    """The experiment's report: the dev/test parts, headline metrics with intervals, per-family
    metrics, verdict shares (test part), matching rates, p-values and accuracies of every
    suspect (with its part), generation cost.

    ``table`` is the whole matching-rate table (with its ``part`` column); ``metrics`` are
    :func:`method_metrics` of its test part.
    """
    test = in_part(table, "test")
    _, test_neg = split_kinds(test[test["method"] == test["method"].iloc[0]]) if len(test) else (None, test)
    n_neg = len(test_neg)
    fpr_label = tpr_label(max_fpr, n_neg) if n_neg else f"TPR@{max_fpr:.0%}FPR"
    ci = (f"; [..] = {bootstrap.confidence:.0%} percentile bootstrap interval ({bootstrap.resamples} resamples "
          "of the positives and, apart, of the negatives)") if bootstrap else ""
    parts = [f"# IPGuard evaluation: `{experiment}`\n", description.strip() + "\n" if description else ""]
    parts.append(
        "Matching rate (MR) = share of fingerprint points on which a suspect gives the owner's label. "
        "Positives are post-processed copies of the owner, negatives independently trained models. "
        "ARUC = area under min(robustness, uniqueness) over thresholds in [0, 1] (exact); "
        f"AUC = ROC AUC with MR as the score; {fpr_label} = the true-positive rate at a false-positive rate of at most "
        f"{max_fpr:.0%} that {n_neg} test negatives can resolve: FPRs come in steps of 1/{max(n_neg, 1)}, so "
        + ("with fewer than 1/max_fpr negatives it is the TPR at FPR 0 (threshold above every negative)" if n_neg and n_neg * max_fpr < 1
           else "the bound is floor(max_fpr × N)/N") + f"{ci}.\n"
    )
    chosen = ("the effects stage sweeps the margin k (and the number of points n) of each IPGuard variant and "
              "chooses k per variant, and so the start and target, on the dev part; its choice and the test metrics "
              "at it are in `effects.md`. "
              "The sets evaluated below use the settings of `conf/` (not chosen on these suspects):\n\n" + md_table(settings_table(costs))
              if costs else "nothing (the settings are those of `conf/`).")
    parts.append(split_section(table, split, chosen))
    parts.append("## Overall, per fingerprint method (test part)\n")
    rows = []
    for method, m in metrics.items():
        o = m.get("overall", {})
        df = test[test["method"] == method]
        pos, neg = split_kinds(df)
        rows.append({
            "method": method, "ARUC": with_interval(o, "aruc"), "AUC": with_interval(o, "auc"),
            fpr_label: with_interval(o, "tpr_at_fpr"),
            "owner MR": m.get("owner_matching_rate"),
            "mean MR positives": float(pos["matching_rate"].mean()) if len(pos) else None,
            "min MR positives": float(pos["matching_rate"].min()) if len(pos) else None,
            "mean MR negatives": float(neg["matching_rate"].mean()) if len(neg) else None,
            "max MR negatives": float(neg["matching_rate"].max()) if len(neg) else None,
            "P": len(pos), "N": len(neg),
        })
    parts.append(md_table(rows))
    parts.append("\n## Per post-processing family (test part: each family's test copies against the test negatives)\n")
    rows = []
    for method, m in metrics.items():
        for family, f in m.get("families", {}).items():
            df = test[(test["method"] == method) & (test["family"] == family) & (test["kind"] == "positive")]
            rows.append({"method": method, "family": family, "ARUC": with_interval(f, "aruc"), "AUC": with_interval(f, "auc"),
                         fpr_label: with_interval(f, "tpr_at_fpr"), "min MR": f["min_positive_mr"],
                         "mean MR": float(df["matching_rate"].mean()), "copies": len(df)})
    parts.append(md_table(rows))
    if verdicts is not None and not verdicts.empty:
        parts.append(f"\n## Verdicts at level {level:g} (test part)\n")
        parts.append(
            "p-value = how unlikely an independent model is to match at least this many points, under the null fitted "
            "to the negatives' match counts (all negatives of the experiment, dev and test: the calibration shipped in "
            "`fingerprints/calibrated/`). Negatives are tested leave-one-out (calibrated on the others), so their "
            "pirated share is an honest false-positive rate. Shares below are over the test part, except "
            "\"negatives pirated, all parts\" (the dev part's negatives too). \"self-check\": the smallest "
            "leave-one-out p-value among the calibration's negatives and which one gets it; at or below the level, "
            "the null fails one of its own negatives and calls no suspect pirated (README, \"Negatives of more than "
            "one kind\").\n"
        )
        rows = []
        test_verdicts = in_part(verdicts, "test")
        for method, df in test_verdicts.groupby("method", sort=False):
            pos, neg = split_kinds(df)
            owner = df[df["kind"] == "owner"]
            shares = {k.replace("_", " "): v for k, v in verdict_shares(df).items()}
            every = verdicts[(verdicts["method"] == method) & (verdicts["kind"] == "negative")]
            cal = calibrations.get(str(method)) if calibrations else None
            worst = cal.worst_negative if cal is not None else (math.nan, "")
            rows.append({"method": method, "null mean MR": cal.mean if cal is not None else None,
                         "owner p": float(owner["p_value"].iloc[0]) if len(owner) else None, **shares,
                         "negatives pirated, all parts": f"{int((every['verdict'] == 'pirated').sum())}/{len(every)}" if len(every) else None,
                         "max p positives": float(pos["p_value"].max()) if len(pos) else None,
                         "min p negatives": float(neg["p_value"].min()) if len(neg) else None,
                         "self-check": f"{worst[0]:.3g} ({worst[1]})" if math.isfinite(worst[0]) else None})
        parts.append(md_table(rows))
    if combined and combined_methods:
        parts.append(combined_section(combined, combined_methods, metrics, fpr_label))
    if targets:
        parts.append(target_section(targets, list(target_exclude or []), n_neg))
    parts.append(evasion_section(table, verdicts, level))
    parts.append("\n## Matching rate of every suspect\n")
    if "score" in table.columns and (table["score"].fillna("match") != "match").any():
        sac = ", ".join(sorted(table.loc[table["score"].fillna("match") != "match", "method"].unique()))
        parts.append(f"For {sac} the number is SAC's similarity to the owner (1 - SAC's distance; higher: more alike), "
                     "not a matching rate; their p-values come from a beta null of the negatives' similarities.\n")
    wide = table.pivot_table(index="suspect", columns="method", values="matching_rate", sort=False)
    info = table.drop_duplicates("suspect").set_index("suspect")
    has_part = "part" in info.columns
    rows = []
    for suspect in info.index:
        row: dict[str, Any] = {"suspect": suspect, "kind": info.at[suspect, "kind"]}
        if has_part:
            row["part"] = info.at[suspect, "part"]
        row["family"] = info.at[suspect, "family"]
        row.update({f"MR {m}": float(wide.at[suspect, m]) for m in wide.columns})
        rows.append(row)
    parts.append(md_table(rows))
    parts.append("\n## Accuracy of every model (held-out test split of the data)\n")
    rows = [
        {"model": s, "kind": info.at[s, "kind"], **({"part": info.at[s, "part"]} if has_part else {}),
         "family": info.at[s, "family"], "arch": info.at[s, "arch"],
         "storage": info.at[s, "storage"], "lineage": info.at[s, "lineage"], "test accuracy": float(info.at[s, "test_accuracy"])}
        for s in info.index
    ]
    parts.append(md_table(rows))
    if verdicts is not None and not verdicts.empty:
        parts.append("\n## p-value of every suspect\n")
        wide = verdicts.pivot_table(index="suspect", columns="method", values="p_value", sort=False)
        rows = [{"suspect": s, **({"part": info.at[s, "part"]} if has_part else {}),
                 **{m: f"{wide.at[s, m]:.2e}" for m in wide.columns}} for s in wide.index]
        parts.append(md_table(rows))
    if costs:
        parts.append("\n## Fingerprint generation cost\n")
        rows = []
        for method, c in costs.items():
            s = c.get("stats", {})
            rows.append({"method": method, "points": int(s.get("n", 0)), "seconds": s.get("seconds"),
                         "point-iterations": s.get("point_iterations"), "mean iterations": s.get("mean_iterations"),
                         "max iterations": s.get("max_iterations"), "converged share": s.get("converged_share"),
                         "sha256": str(c.get("sha256", ""))[:12]})
        parts.append(md_table(rows))
    return "\n".join(p for p in parts if p)


def plot_figures(table: pd.DataFrame, metrics: Mapping[str, Mapping[str, Any]], outdir: Path) -> list[Path]:
    """PNG figures: robustness/uniqueness curves, ROC curves, MR per family. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    curve_tables, roc_tables = curves(table), rocs(table)
    methods = list(curve_tables)
    if methods:
        fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
        for ax, method in zip(axes[0], methods):
            c = curve_tables[method]
            ax.step(c["threshold"], c["robustness"], where="post", label="robustness R(t)")
            ax.step(c["threshold"], c["uniqueness"], where="post", label="uniqueness U(t)")
            ax.fill_between(c["threshold"], np.minimum(c["robustness"], c["uniqueness"]), step="post", alpha=0.2)
            ax.set_title(f"{method}: test ARUC {metrics[method]['overall']['aruc']:.3f}")
            ax.set_xlabel("threshold t on the matching rate")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(loc="lower left", fontsize=8)
        written.append(save_figure(fig, outdir / "robustness_uniqueness.png"))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for method in methods:
            r = roc_tables[method]
            ax.step(r["fpr"], r["tpr"], where="post", label=f"{method} (AUC {metrics[method]['overall']['auc']:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right", fontsize=8)
        written.append(save_figure(fig, outdir / "roc.png"))
    for method, df in table.groupby("method", sort=False):
        families = list(dict.fromkeys(df.sort_values(["kind", "family"], ascending=[False, True])["family"]))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(families) + 2), 3.8))
        for pos_x, family in enumerate(families):
            rows = df[df["family"] == family]
            color = {"positive": "tab:red", "negative": "tab:blue", "owner": "black"}[rows["kind"].iloc[0]]
            jitter = np.linspace(-0.15, 0.15, len(rows)) if len(rows) > 1 else np.zeros(1)
            ax.scatter(pos_x + jitter, rows["matching_rate"], s=14, color=color)
        ax.set_xticks(range(len(families)), families, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("matching rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{method}: matching rate per family, test part (red positive, blue negative)", fontsize=9)
        written.append(save_figure(fig, outdir / f"matching_rates_{method}.png"))
    return written


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from ipguard.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
