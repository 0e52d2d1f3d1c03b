"""Stage ``evaluate``: metrics, tables, curves and figures from the matching rates.

Reads ``evaluate.max_fpr`` and ``experiment``; writes ``reports/<experiment>/``: ``metrics.json``
(DVC metrics), ``report.md``, ``plots/`` (DVC plots) and ``figures/`` (PNG).
"""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd

from ipguard.config import Params
from ipguard.errors import IpguardError
from ipguard.io import write_json, write_text
from ipguard.report import curves, markdown_report, method_metrics, plot_figures, rocs
from ipguard.stages.common import fingerprint_path, reports_dir, run_stage
from ipguard.tracking import stage_run


def _csv(df: pd.DataFrame) -> str:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, float_format="%.6f", lineterminator="\n")
    return buffer.getvalue()


def evaluate(params: Params, key: str | None = None) -> None:
    out = reports_dir(params)
    source = out / "matching_rates.csv"
    if not source.is_file():
        raise IpguardError(f"{source}: not found (run the match stage first)")
    table = pd.read_csv(source)
    max_fpr = params.evaluate.max_fpr
    metrics = method_metrics(table, max_fpr)
    costs = {}
    for method in table["method"].unique():
        cost_file = fingerprint_path(method).with_suffix(".json")
        if cost_file.is_file():
            costs[method] = json.loads(cost_file.read_text())
    write_json(out / "metrics.json", {"max_fpr": max_fpr, "methods": metrics})
    write_text(out / "report.md", markdown_report(table, metrics, costs, params.experiment.name, params.experiment.description, max_fpr))
    # Plots and figures are folders: rebuild them whole so that no stale file stays behind.
    for sub, tables in (("plots/curves", curves(table)), ("plots/roc", rocs(table))):
        shutil.rmtree(out / sub, ignore_errors=True)
        for method, df in tables.items():
            write_text(out / sub / f"{method}.csv", _csv(df))
    shutil.rmtree(out / "figures", ignore_errors=True)
    figures = plot_figures(table, metrics, out / "figures")
    with stage_run(params.tracking, params.experiment.name, "evaluate", {"stage": "evaluate"}) as run:
        run.log_params({"max_fpr": max_fpr, "methods": ",".join(metrics)})
        for method, m in metrics.items():
            if "overall" in m:
                run.log_metrics({f"{method}.{k}": v for k, v in m["overall"].items()})
                for family, f in m.get("families", {}).items():
                    run.log_metrics({f"{method}.{family}.{k}": v for k, v in f.items() if k in {"aruc", "auc", "tpr_at_fpr"}})
        for path in [out / "metrics.json", out / "report.md", source, *figures]:
            run.log_artifact(path)
        run.log_artifact(out / "plots", "plots")


def main() -> None:
    run_stage(__doc__ or "", evaluate)


if __name__ == "__main__":
    main()
