"""``python -m ipguard.report_index``: gather every experiment's headline numbers into reports/README.md.

Each ``reports/<experiment>/metrics.json`` (written by the pipeline's evaluate stage) gives one
column group; the page says how to regenerate each experiment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ipguard.config import CONF_DIR
from ipguard.io import write_text
from ipguard.report import md_table

COMMANDS = {"digits": "make repro"}


def build(reports: Path) -> str:
    """The markdown of the index over every experiment folder under ``reports``."""
    experiments = sorted(p.parent.name for p in reports.glob("*/metrics.json"))
    parts = ["# Results\n",
             "Every table below is read from `reports/<experiment>/metrics.json`; the full tables "
             "(per family, per suspect, p-values, accuracies, generation cost) are in each "
             "experiment's `report.md`, the effect of k and n in its `effects.md`. "
             "Regenerate this page with `python -m ipguard.report_index`.\n"]
    rows = []
    for exp in experiments:
        cmd = COMMANDS.get(exp, f"dvc exp run -S experiment={exp}")
        rows.append({"experiment": exp, "regenerate": f"`{cmd}`", "report": f"[{exp}/report.md]({exp}/report.md)"})
    parts.append(md_table(rows))
    missing = sorted({p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")} - set(experiments) - {"tiny"})
    if missing:
        parts.append("\nNot measured here (no results yet): " + ", ".join(f"`{m}`" for m in missing) +
                     ". Their code paths are tested on small synthetic stand-ins only (`tests/`).\n")
    for metric, label in (("aruc", "ARUC"), ("auc", "ROC AUC"), ("tpr_at_fpr", "TPR at 1% FPR")):
        parts.append(f"\n## {label} per fingerprint method and experiment\n")
        data = {exp: json.loads((reports / exp / "metrics.json").read_text())["methods"] for exp in experiments}
        methods = list(dict.fromkeys(m for exp in experiments for m in data[exp]))
        table = [{"method": m, **{exp: data[exp].get(m, {}).get("overall", {}).get(metric) for exp in experiments}} for m in methods]
        parts.append(md_table(table))
    parts.append("\n## Matching rates per suspect family (ipguard)\n")
    rows = []
    for exp in experiments:
        families = json.loads((reports / exp / "metrics.json").read_text())["methods"].get("ipguard", {}).get("families", {})
        for family, f in families.items():
            rows.append({"experiment": exp, "family": family, "min MR": f["min_positive_mr"], "ARUC": f["aruc"], "AUC": f["auc"]})
    parts.append(md_table(rows))
    parts.append("\n## Effect of the margin k (the k sweep of each experiment's effects stage)\n")
    rows = []
    for exp in experiments:
        effects = reports / exp / "effects.json"
        for r in json.loads(effects.read_text())["k"] if effects.is_file() else []:
            rows.append({"experiment": exp, "k": r["k"], "ARUC": r["ARUC"], "AUC": r["AUC"],
                         "mean MR positives": r["mean MR positives"], "mean MR negatives": r["mean MR negatives"],
                         "converged share": r["converged share"]})
    parts.append(md_table(rows))
    parts.append("\n## Generation cost (the fingerprint stage, on the machine that ran the experiment)\n")
    rows = []
    for exp in experiments:
        cost_file = reports / exp / "generation_cost.json"
        for method, c in (json.loads(cost_file.read_text()) if cost_file.is_file() else {}).items():
            rows.append({"experiment": exp, "method": method, "n": int(c["n"]) if "n" in c else None, "seconds": c.get("seconds"),
                         "mean iterations": c.get("mean_iterations"), "converged share": c.get("converged_share")})
    parts.append(md_table(rows) if rows else "(no generation_cost.json yet: rerun the evaluate stage)\n")
    return "\n".join(parts)


def main() -> int:
    reports = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports")
    write_text(reports / "README.md", build(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
