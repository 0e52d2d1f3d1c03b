"""The owner's near-twins on a real zoo: what more of them among the negatives does to the verdicts.

On ``cifar10_cpu`` (before the twins were added) the negatives held two models of the owner's own
architecture and recipe trained on the owner's own images, and ``fgsm``'s null called one of them
pirated. The zoo now has six. This benchmark measures, in a ``cifar10_cpu`` workspace whose zoo
(owner and negatives) and fingerprint sets are built (``dvc repro`` up to the fingerprint
stages; the post-processed copies need not be, and negatives not built are left out and listed),
the matching rate of every negative on every set, and judges them (leave-one-out) with the
calibration on the others, as the pipeline's evaluate stage does; with ``--table``, also the
positives of an earlier whole run (its ``matching_rates.csv``), but only where this workspace
reproduces that run's bytes (the owner's match counts and every set's sha256, compared below):

    python benchmarks/near_twins.py --workspace ../ws --table reports/cifar10_cpu/matching_rates.csv \
        --out benchmarks/results/near_twins_cifar10_cpu.json

(``benchmarks/results/near_twins_cifar10_cpu.json`` was made on a CPU without bf16 units: there
the owner and ``ab48_s1_owner`` trained with the recipe's bf16 autocast, the other trained
negatives with ``autocast: none`` in the workspace's ``params.yaml``, 2.4x faster there; the
record says which. Its owner is not the committed report's, so it has no positives.)

Reported per method: the twins' matching rates against the other negatives'; the negatives called
pirated (all parts, leave-one-out); the self-check (:func:`ipguard.stats.worst_negative`); the
share of test positives called pirated, and the verdicts the self-check withheld; test AUC.
Without the earlier positives (no ``--table``, or another machine's bytes: bf16 training differs
between CPUs with and without bf16 units) the positives' fields are null.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

WITHHELD = "but the same null calls a known independent model pirated"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True, help="a cifar10_cpu workspace (zoo and fingerprints built)")
    ap.add_argument("--table", type=Path, help="matching_rates.csv of an earlier whole run, for its positives")
    ap.add_argument("--twins", default="airbench48/owner", help="the negatives' family of the owner's near-twins")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    old = pd.read_csv(args.table.resolve()) if args.table else None
    out_path = args.out.resolve() if args.out else None
    os.chdir(args.workspace)
    from ipguard.config import load_params
    from ipguard.io import load_fingerprint_set
    from ipguard.report import calibrate_table, in_part, method_metrics
    from ipguard.stages.common import fingerprint_path, zoo_path
    from ipguard.stages.match import match_table

    start = time.perf_counter()
    params = load_params("params.yaml")
    if params.experiment.name != "cifar10_cpu":
        raise SystemExit(f"{args.workspace}: params.yaml is composed for {params.experiment.name}, not cifar10_cpu")
    sets = {name: load_fingerprint_set(fingerprint_path(name)) for name in params.fingerprint
            if fingerprint_path(name).is_file()}
    sets_missing = sorted(set(params.fingerprint) - set(sets))
    # The owner and the negatives built in the workspace only: the copies come from the earlier table.
    built = {k: v for k, v in params.zoo.models.items() if zoo_path(k).exists()}
    missing = sorted(set(params.zoo.models) - set(built))
    zoo = dataclasses.replace(params.zoo, models=built)
    table = match_table(dataclasses.replace(params, postprocess={}, zoo=zoo), sets)
    reproduced: dict[str, Any] = {"compared": False}
    merged = table
    if old is not None:
        same = table.merge(old, on=["method", "suspect"], suffixes=("", "_old"))
        changed = same[(same["matching_rate"] - same["matching_rate_old"]).abs() > 1e-6]
        sha_changed = same[same["fingerprint_sha256"] != same["fingerprint_sha256_old"]].drop_duplicates("method")
        reproduced = {"compared": True, "rows": len(same), "matching_rates_changed": len(changed),
                      "fingerprint_sets_changed": len(sha_changed)}
        # The earlier positives are judged only if this workspace is the earlier run's bytes
        # (another CPU, e.g. one without bf16 units, trains another owner).
        if changed.empty and sha_changed.empty:
            merged = pd.concat([table, old[(old["kind"] == "positive") & old["method"].isin(sets)]], ignore_index=True)
    verdicts, cals = calibrate_table(merged, params.evaluate.level)
    has_positives = bool((merged["kind"] == "positive").any())
    metrics = method_metrics(merged, params.evaluate.max_fpr, "test") if has_positives else {}
    negatives = verdicts[verdicts["kind"] == "negative"]
    twin_names = sorted(negatives.loc[negatives["family"] == args.twins, "suspect"].unique())
    methods: list[dict[str, Any]] = []
    for method, df in verdicts.groupby("method", sort=False):
        neg = df[df["kind"] == "negative"]
        twins = neg[neg["family"] == args.twins]
        pos = in_part(df, "test")
        pos = pos[pos["kind"] == "positive"]
        worst_p, worst = cals[str(method)].worst_negative
        methods.append({
            "method": method,
            "twins_matching_rates": {r["suspect"]: round(float(r["matching_rate"]), 4) for _, r in twins.iterrows()},
            "twins_leave_one_out_p": {r["suspect"]: float(f"{r['p_value']:.4g}") for _, r in twins.iterrows()},
            "other_negatives_max": round(float(neg.loc[neg["family"] != args.twins, "matching_rate"].max()), 4),
            "negatives_pirated": sorted(neg.loc[neg["verdict"] == "pirated", "suspect"]),
            "negatives_withheld": sorted(neg.loc[neg["reason"].str.contains(WITHHELD, regex=False), "suspect"]),
            "self_check_p": round(worst_p, 6), "self_check_negative": worst,
            "test_positives_pirated": round(float((pos["verdict"] == "pirated").mean()), 4) if len(pos) else None,
            "test_positives_withheld": int(pos["reason"].str.contains(WITHHELD, regex=False).sum()) if len(pos) else None,
            "owner_verdict": str(df.loc[df["kind"] == "owner", "verdict"].iloc[0]),
            "test_auc": round(metrics[str(method)]["overall"]["auc"], 4) if len(pos) else None,
            "test_aruc": round(metrics[str(method)]["overall"]["aruc"], 4) if len(pos) else None,
        })
    accuracy = table.drop_duplicates("suspect").set_index("suspect")
    record = {
        "benchmark": "near_twins", "workspace_commit": os.popen("git rev-parse --short HEAD").read().strip(),
        "earlier_table": str(args.table) if args.table else None, "negatives": int(negatives["suspect"].nunique()), "twins": twin_names,
        "twins_test_accuracy": {n: float(accuracy.at[n, "test_accuracy"]) for n in twin_names},
        # A workspace may train some twins without bf16 autocast (on CPUs without bf16 units it is
        # 2.4x slower than float32): say which, beside the owner's.
        "autocast": {n: params.training_for(n).autocast for n in ["owner", *twin_names]},
        "parts": {n: str(accuracy.at[n, "part"]) for n in twin_names},
        "positives": int(merged.loc[merged["kind"] == "positive", "suspect"].nunique()),
        "negatives_not_built": missing, "sets_not_built": sets_missing, "earlier_table_reproduced": reproduced,
        "level": params.evaluate.level,
        "seconds": round(time.perf_counter() - start, 1), "methods": methods,
    }
    print(json.dumps(record, indent=1))
    if out_path:
        out_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
