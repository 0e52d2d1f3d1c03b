"""Stage ``evaluate``: metrics, verdicts, tables, curves and figures from the matching rates.

Reads ``evaluate`` and ``experiment``; writes ``reports/<experiment>/``: ``metrics.json`` (DVC
metrics), ``verdicts.csv`` (p-value and verdict of every suspect), ``report.md``, ``plots/``
(DVC plots) and ``figures/`` (PNG); and ``fingerprints/calibrated/<method>.safetensors``, each
fingerprint set with its calibration, ready for ``ipguard verify``. Metrics, intervals, verdict
shares, plots and figures are computed on the test part of the suspects (the ``part`` column
of the match stage); the report names both parts.
"""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd

from ipguard.config import Params
from ipguard.errors import IpguardError
from ipguard.io import load_fingerprint_set, save_fingerprint_file, write_json, write_text
from ipguard.report import (
    calibrate_table,
    combined_metrics,
    combined_verdicts,
    in_part,
    markdown_report,
    method_metrics,
    plot_figures,
    plot_tables,
    target_metrics,
    verdict_shares,
)
from ipguard.stages.common import calibrated_path, fingerprint_path, reports_dir, run_stage
from ipguard.stages.suspects import check_evaluate
from ipguard.tracking import stage_run

def _csv(df: pd.DataFrame) -> str:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, float_format="%.6g", lineterminator="\n")
    return buffer.getvalue()


def _keyed(targets: list[dict]) -> dict[str, dict]:
    """Targets by name and their families by family: paths that `dvc metrics diff` can follow."""
    return {t["name"]: {**{k: v for k, v in t.items() if k not in {"name", "families"}},
                        "families": {f["family"]: {k: v for k, v in f.items() if k != "family"} for f in t["families"]}}
            for t in targets}


def evaluate(params: Params, key: str | None = None) -> None:
    out = reports_dir(params)
    source = out / "matching_rates.csv"
    if not source.is_file():
        raise IpguardError(f"{source}: not found (run the match stage first)")
    table = pd.read_csv(source)
    if "part" not in table.columns:
        raise IpguardError(f"{source}: no 'part' column (written before the dev/test split; rerun the match stage)")
    check_evaluate(params)
    cfg = params.evaluate
    max_fpr, level = cfg.max_fpr, cfg.level
    # Every reported number is computed on the test part; the dev part is where settings are chosen.
    test = in_part(table, "test")
    metrics = method_metrics(table, max_fpr, part="test", bootstrap=cfg.bootstrap)
    # The calibration shipped with each set uses every negative (what a user would calibrate
    # with); negatives are assessed leave-one-out, and the shares below count the test part.
    verdicts, calibrations = calibrate_table(table, level)
    shutil.rmtree(calibrated_path("x").parent, ignore_errors=True)
    for method, cal in calibrations.items():
        v = in_part(verdicts[verdicts["method"] == method], "test")
        metrics[method]["calibration"] = cal.to_dict()
        metrics[method].update(verdict_shares(v))
        inputs, labels, outputs, meta = load_fingerprint_set(fingerprint_path(method))
        save_fingerprint_file(calibrated_path(method), inputs, labels, {**meta, "calibration": cal.to_dict()}, outputs=outputs)
    combined, rows = None, None
    if cfg.combine:
        # One verdict from several sets (issue 11): rows `combined` in verdicts.csv, its own metrics.
        rows = combined_verdicts(verdicts, list(cfg.combine), level)
        combined = {"methods": list(cfg.combine), **combined_metrics(rows, max_fpr, "test", cfg.bootstrap)}
        verdicts = pd.concat([verdicts, rows], ignore_index=True)
    targets = target_metrics(table, rows, list(cfg.target), list(cfg.target_exclude))
    costs = {}
    for method in table["method"].unique():
        cost_file = fingerprint_path(method).with_suffix(".json")
        if cost_file.is_file():
            costs[method] = json.loads(cost_file.read_text())
    info = table.drop_duplicates("suspect")
    split = {"dev_fraction": cfg.split.dev_fraction, "seed": cfg.split.seed,
             **{f"{part}_{kind}s": int(((info["part"] == part) & (info["kind"] == kind)).sum())
                for part in ("dev", "test") for kind in ("positive", "negative")}}
    write_json(out / "metrics.json", {"max_fpr": max_fpr, "level": level, "split": split, "methods": metrics,
                                      **({"combined": combined} if combined else {}),
                                      **({"target": _keyed(targets)} if targets else {})})
    # Seconds vary between runs, so the cost is kept apart from the (deterministic) metrics.
    write_json(out / "generation_cost.json", {m: c.get("stats", {}) for m, c in costs.items()})
    write_text(out / "verdicts.csv", _csv(verdicts))
    write_text(out / "report.md", markdown_report(table, metrics, costs, params.experiment.name, params.experiment.description,
                                                  max_fpr, verdicts, calibrations, level, cfg.split, cfg.bootstrap,
                                                  combined, list(cfg.combine), targets, list(cfg.target_exclude)))
    # Plots and figures are folders: rebuild them whole so that no stale file stays behind.
    for sub, tables in plot_tables(test).items():
        shutil.rmtree(out / "plots" / sub, ignore_errors=True)
        for method, df in tables.items():
            write_text(out / "plots" / sub / f"{method}.csv", _csv(df))
    shutil.rmtree(out / "figures", ignore_errors=True)
    figures = plot_figures(test, metrics, out / "figures")
    with stage_run(params.tracking, params.experiment.name, "evaluate", {"stage": "evaluate"}) as run:
        run.log_params({"max_fpr": max_fpr, "level": level, "methods": ",".join(metrics),
                        "split": {"dev_fraction": cfg.split.dev_fraction, "seed": cfg.split.seed}})
        for method, m in metrics.items():
            if "overall" in m:
                run.log_metrics({f"{method}.{k}": v for k, v in m["overall"].items()})
                for family, f in m.get("families", {}).items():
                    run.log_metrics({f"{method}.{family}.{k}": v for k, v in f.items() if k in {"aruc", "auc", "tpr_at_fpr"}})
        if combined and "overall" in combined:
            run.log_metrics({f"combined.{k}": v for k, v in combined["overall"].items()})
        for path in [out / "metrics.json", out / "report.md", out / "verdicts.csv", source, *figures]:
            run.log_artifact(path)
        run.log_artifact(out / "plots", "plots")


def main() -> None:
    run_stage(__doc__ or "", evaluate)


if __name__ == "__main__":
    main()
