"""``python -m ipguard.report_index``: gather every experiment's headline numbers into reports/README.md.

Each ``reports/<experiment>/metrics.json`` (written by the pipeline's evaluate stage) gives one
column group; the page says how to regenerate each experiment, and how long its last full run
took where ``reports/<experiment>/run.json`` records it (``wall_seconds``, ``command``,
``commit``, ``machine``, ``note``: written by whoever ran it, since no stage can time the whole
pipeline it is part of).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ipguard.config import CONF_DIR
from ipguard.io import write_text
from ipguard.report import md_table, with_interval

COMMANDS = {"digits": "make repro"}


def build(reports: Path) -> str:
    """The markdown of the index over every experiment folder under ``reports``."""
    experiments = sorted(p.parent.name for p in reports.glob("*/metrics.json"))
    parts = ["# Results\n",
             "Every table below is read from `reports/<experiment>/metrics.json` and `effects.json`; "
             "every number is measured on the experiment's test part of the suspects (settings are "
             "chosen on its dev part). The full tables (the parts, per family, per suspect, p-values, "
             "accuracies, generation cost) are in each experiment's `report.md`, the choice of k and the "
             "effect of n in its `effects.md`. "
             "Regenerate this page with `python -m ipguard.report_index`.\n"]
    metrics = {exp: json.loads((reports / exp / "metrics.json").read_text()) for exp in experiments}
    rows = []
    runs = {}
    for exp in experiments:
        cmd = COMMANDS.get(exp, f"dvc exp run -S experiment={exp}")
        split = metrics[exp].get("split", {})
        run_file = reports / exp / "run.json"
        runs[exp] = json.loads(run_file.read_text()) if run_file.is_file() else {}
        # A run that reused another experiment's stages says "full": false: its time is not a full run's.
        wall = runs[exp].get("wall_seconds") if runs[exp].get("full", True) else None
        rows.append({"experiment": exp, "regenerate": f"`{cmd}`", "report": f"[{exp}/report.md]({exp}/report.md)",
                     "test part (P / N)": f"{split['test_positives']} / {split['test_negatives']}" if split else "all suspects",
                     "dev part (P / N)": f"{split['dev_positives']} / {split['dev_negatives']}" if split else "–",
                     "last full run": f"{wall / 60:.1f} min" if wall else "–"})
    parts.append(md_table(rows))
    for exp, run in runs.items():
        if run:
            parts.append(f"\n`{exp}`: {run.get('command', '')} at {run.get('commit', '?')} on {run.get('machine', '?')}, "
                         f"{run['wall_seconds'] / 60:.1f} min{'' if run.get('full', True) else ' (not a full run)'}. "
                         f"{run.get('note', '')}".rstrip() + "\n")
    missing = sorted({p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")} - set(experiments) - {"tiny"})
    if missing:
        parts.append("\nNot measured here (no results yet): " + ", ".join(f"`{m}`" for m in missing) +
                     ". Their code paths are tested on small synthetic stand-ins only (`tests/`).\n")
    tpr = ("TPR at FPR <= 1% (the FPR the test negatives resolve: at FPR 0 with fewer than 100 of them; "
           "`tpr_fpr_bound` in metrics.json)")
    for metric, label in (("aruc", "ARUC"), ("auc", "ROC AUC"), ("tpr_at_fpr", tpr)):
        parts.append(f"\n## {label} per fingerprint method and experiment (test part, [95% bootstrap interval])\n")
        # The combined verdict (evaluate.combine) is a row of its own; it has no ARUC.
        data = {exp: {**metrics[exp]["methods"], **({"combined": metrics[exp]["combined"]} if "combined" in metrics[exp] else {})}
                for exp in experiments}
        methods = list(dict.fromkeys(m for exp in experiments for m in data[exp]))
        table = [{"method": m, **{exp: with_interval(data[exp].get(m, {}).get("overall", {}), metric) for exp in experiments}}
                 for m in methods]
        parts.append(md_table(table))
    parts.append("\n## Targets (`evaluate.target`, test part): the combined verdict's worst family and the sets that meet them\n")
    rows = []
    for exp in experiments:
        for name, t in metrics[exp].get("target", {}).items():
            judged = {f: v for f, v in t["families"].items() if v["copies"] and v.get("auc_combined") is not None}
            worst = min(judged, key=lambda f: judged[f]["auc_combined"]) if judged else None
            rows.append({"experiment": exp, "target": f"{name} (AUC >= {t['auc']:g})",
                         "combined": {True: "met", False: "not met", None: "–"}[t.get("met_by_combined")],
                         "worst family (combined AUC)": f"{worst} ({judged[worst]['auc_combined']:.3f})" if worst else "–",
                         "sets alone that meet it": ", ".join(t.get("met_by", [])) or "none",
                         "not judged": (", ".join(t.get("unmeasured", [])) or "–") if t["families"] else "none built"})
    parts.append(md_table(rows) if rows else "(no experiment's metrics.json has targets yet: rerun the evaluate stage)\n")
    parts.append("\n## Matching rates per suspect family (ipguard, test part)\n")
    rows = []
    for exp in experiments:
        families = metrics[exp]["methods"].get("ipguard", {}).get("families", {})
        for family, f in families.items():
            rows.append({"experiment": exp, "family": family, "min MR": f["min_positive_mr"], "ARUC": f["aruc"], "AUC": f["auc"]})
    parts.append(md_table(rows))
    parts.append("\n## k chosen on dev, measured on test (each experiment's effects stage)\n")
    rows = []
    for exp in experiments:
        effects = reports / exp / "effects.json"
        chosen = json.loads(effects.read_text()).get("chosen", {}) if effects.is_file() else {}
        for method, c in chosen.items():
            test = c.get("test") or {}
            rows.append({"experiment": exp, "method": method, "chosen k": c["k"], "chosen n": c["n"], "dev ARUC": c["dev"]["aruc"],
                         "test ARUC": with_interval(test, "aruc"), "test AUC": with_interval(test, "auc")})
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
