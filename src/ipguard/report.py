"""Tables and figures from the matching-rate table (pure: DataFrames in, text and figures out)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ipguard.evaluate import robustness, roc_curve, summarize, uniqueness
from ipguard.stats import Calibration, fit_calibration, leave_one_out_p_values, p_value, verdict

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 201), 6)


def split_kinds(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Positive and negative rows of one method's matching rates."""
    return df[df["kind"] == "positive"], df[df["kind"] == "negative"]


def method_metrics(table: pd.DataFrame, max_fpr: float) -> dict[str, dict[str, Any]]:
    """Per fingerprint method: ARUC, AUC, TPR at ``max_fpr`` overall and per positive family."""
    out: dict[str, dict[str, Any]] = {}
    for method, df in table.groupby("method", sort=False):
        pos, neg = split_kinds(df)
        owner = df[df["kind"] == "owner"]["matching_rate"]
        entry: dict[str, Any] = {"owner_matching_rate": float(owner.iloc[0]) if len(owner) else None}
        if len(pos) and len(neg):
            entry["overall"] = summarize(pos["matching_rate"], neg["matching_rate"], max_fpr)
            entry["families"] = {
                family: summarize(fam["matching_rate"], neg["matching_rate"], max_fpr)
                for family, fam in pos.groupby("family", sort=False)
            }
        out[str(method)] = entry
    return out


def calibrate_table(table: pd.DataFrame, level: float) -> tuple[pd.DataFrame, dict[str, Calibration]]:
    """p-values and verdicts for every row, and each method's calibration on all its negatives.

    A negative's own p-value comes from a calibration fitted on the other negatives
    (leave-one-out), so the share of negatives called pirated is an honest false-positive rate.
    """
    rows, calibrations = [], {}
    for method, df in table.groupby("method", sort=False):
        neg = df[df["kind"] == "negative"]
        if neg.empty:
            continue
        n = int(df["n"].iloc[0])
        cal = fit_calibration(neg["matches"].astype(int).tolist(), n, level)
        calibrations[str(method)] = cal
        loo = dict(zip(neg.index, leave_one_out_p_values(neg["matches"].astype(int).tolist(), n, level)))
        for idx, row in df.iterrows():
            p = loo[idx] if idx in loo else p_value(int(row["matches"]), int(row["n"]), cal)
            rows.append({**row.to_dict(), "p_value": p, "verdict": verdict(p, level)})
    return pd.DataFrame(rows), calibrations


def verdict_shares(verdicts: pd.DataFrame) -> dict[str, float]:
    """Share of positives called pirated, and of negatives (tested leave-one-out), in one method's verdicts."""
    out = {}
    for kind, key in (("positive", "positives_called_pirated"), ("negative", "negatives_called_pirated_loo")):
        rows = verdicts[verdicts["kind"] == kind]
        out[key] = float((rows["verdict"] == "pirated").mean()) if len(rows) else float("nan")
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


def markdown_report(
    table: pd.DataFrame, metrics: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
    experiment: str, description: str, max_fpr: float,
    verdicts: pd.DataFrame | None = None, calibrations: Mapping[str, Calibration] | None = None, level: float = 0.01,
) -> str:
    """The experiment's report: headline metrics, per-family metrics, matching rates, accuracies, cost."""
    fpr_label = f"TPR@{max_fpr:.0%}FPR"
    parts = [f"# IPGuard evaluation: `{experiment}`\n", description.strip() + "\n" if description else ""]
    parts.append(
        "Matching rate (MR) = share of fingerprint points on which a suspect gives the owner's label. "
        "Positives are post-processed copies of the owner, negatives independently trained models. "
        "ARUC = area under min(robustness, uniqueness) over thresholds in [0, 1] (exact); "
        f"AUC = ROC AUC with MR as the score; {fpr_label} = true-positive rate at a false-positive rate of at most {max_fpr:.0%}.\n"
    )
    parts.append("## Overall, per fingerprint method\n")
    rows = []
    for method, m in metrics.items():
        o = m.get("overall", {})
        df = table[table["method"] == method]
        pos, neg = split_kinds(df)
        rows.append({
            "method": method, "ARUC": o.get("aruc"), "AUC": o.get("auc"), fpr_label: o.get("tpr_at_fpr"),
            "owner MR": m.get("owner_matching_rate"),
            "mean MR positives": float(pos["matching_rate"].mean()) if len(pos) else None,
            "min MR positives": float(pos["matching_rate"].min()) if len(pos) else None,
            "mean MR negatives": float(neg["matching_rate"].mean()) if len(neg) else None,
            "max MR negatives": float(neg["matching_rate"].max()) if len(neg) else None,
            "P": len(pos), "N": len(neg),
        })
    parts.append(md_table(rows))
    parts.append("\n## Per post-processing family (each family's copies against all negatives)\n")
    rows = []
    for method, m in metrics.items():
        for family, f in m.get("families", {}).items():
            df = table[(table["method"] == method) & (table["family"] == family) & (table["kind"] == "positive")]
            rows.append({"method": method, "family": family, "ARUC": f["aruc"], "AUC": f["auc"],
                         fpr_label: f["tpr_at_fpr"], "min MR": f["min_positive_mr"],
                         "mean MR": float(df["matching_rate"].mean()), "copies": len(df)})
    parts.append(md_table(rows))
    parts.append("\n## Matching rate of every suspect\n")
    wide = table.pivot_table(index="suspect", columns="method", values="matching_rate", sort=False)
    info = table.drop_duplicates("suspect").set_index("suspect")
    rows = []
    for suspect in info.index:
        row: dict[str, Any] = {"suspect": suspect, "kind": info.at[suspect, "kind"], "family": info.at[suspect, "family"]}
        row.update({f"MR {m}": float(wide.at[suspect, m]) for m in wide.columns})
        rows.append(row)
    parts.append(md_table(rows))
    parts.append("\n## Accuracy of every model (held-out test split)\n")
    rows = [
        {"model": s, "kind": info.at[s, "kind"], "family": info.at[s, "family"], "arch": info.at[s, "arch"],
         "storage": info.at[s, "storage"], "lineage": info.at[s, "lineage"], "test accuracy": float(info.at[s, "test_accuracy"])}
        for s in info.index
    ]
    parts.append(md_table(rows))
    if verdicts is not None and not verdicts.empty:
        parts.append(f"\n## Verdicts at level {level:g} (beta-binomial calibration on the negatives)\n")
        parts.append(
            "p-value = P(an independent model matches at least this many points), with the independent "
            "models' match rate fitted as a Beta distribution to the negatives of the zoo. Negatives are "
            "tested leave-one-out (calibrated on the others), so their pirated share is an honest false-positive rate.\n"
        )
        rows = []
        for method, df in verdicts.groupby("method", sort=False):
            pos, neg = split_kinds(df)
            owner = df[df["kind"] == "owner"]
            rows.append({"method": method, "null mean MR": calibrations[method].mean if calibrations else None,
                         "owner p": float(owner["p_value"].iloc[0]) if len(owner) else None,
                         "positives called pirated": float((pos["verdict"] == "pirated").mean()) if len(pos) else None,
                         "negatives called pirated (LOO)": float((neg["verdict"] == "pirated").mean()) if len(neg) else None,
                         "max p positives": float(pos["p_value"].max()) if len(pos) else None,
                         "min p negatives": float(neg["p_value"].min()) if len(neg) else None})
        parts.append(md_table(rows))
        parts.append("\n### p-value of every suspect\n")
        wide = verdicts.pivot_table(index="suspect", columns="method", values="p_value", sort=False)
        rows = [{"suspect": s, **{m: f"{wide.at[s, m]:.2e}" for m in wide.columns}} for s in wide.index]
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
            ax.set_title(f"{method}: ARUC {metrics[method]['overall']['aruc']:.3f}")
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
        ax.set_title(f"{method}: matching rate per family (red positive, blue negative)", fontsize=9)
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
