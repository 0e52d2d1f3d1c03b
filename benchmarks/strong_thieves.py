"""Thieves that train longer: every fingerprint set against adversarially trained extractions of
the owner that are closer to it than the pipeline's, among a real zoo's negatives (issue 11).

The committed ``cifar10_cpu`` report judges adversarial extraction on three students of 2-3
epochs (58-69 % accurate, one of them in the test part): too weak and too few to say whether a
method holds against the family. Here, in a ``cifar10_cpu`` workspace whose zoo and fingerprint
sets are built, the workspace's ``params.yaml`` names more post-processed copies (``--prefix``,
``thief_`` by default; built with ``python -m ipguard.stages postprocess KEY``), and every set
is judged on them as the evaluate stage does: the positives against a calibration on all the
negatives, each negative leave-one-out against the others. AUC and TPR at FPR 0 over all the
negatives built (with percentile bootstrap intervals), and the combined verdict of
``evaluate.combine`` with and without ``--also`` (a set added to the combination):

    python benchmarks/strong_thieves.py --workspace ../ws --also conferrable_mistakes \\
        --out benchmarks/results/strong_thieves_cifar10_cpu.json

No setting of any set was chosen on these thieves; the sets' own settings are the workspace's
(for the existing methods, chosen on the dev part of an earlier run's suspects). Every negative
counts here, so the AUCs are over more negatives than a report's test part; the record says
which negatives and sets were built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch


def _agreement(names: list[str]) -> dict[str, float]:
    """Each model's share of the 10,000 test images labelled as the owner labels them."""
    from ipguard.models import load_model, predict
    from ipguard.stages.common import load_split, variant_path, zoo_path

    test = load_split("test")
    owner, _ = load_model(str(zoo_path("owner")))
    ref = predict(owner.to(memory_format=torch.channels_last), test.x.contiguous(memory_format=torch.channels_last))
    out = {}
    for name in names:
        model, _ = load_model(str(variant_path(name)))
        labels = predict(model.to(memory_format=torch.channels_last), test.x.contiguous(memory_format=torch.channels_last))
        out[name] = round(float((labels == ref).float().mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True, help="a cifar10_cpu workspace (zoo, sets and the thieves built)")
    ap.add_argument("--prefix", default="thief_", help="the post-processed copies judged: postprocess keys with this prefix")
    ap.add_argument("--also", nargs="*", default=[], help="sets added to evaluate.combine for a second combined verdict")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out_path = args.out.resolve() if args.out else None
    os.chdir(args.workspace)
    from ipguard.config import load_params
    from ipguard.io import load_fingerprint_set
    from ipguard.report import calibrate_table, combined_metrics, combined_verdicts, method_metrics
    from ipguard.stages.common import fingerprint_path, variant_path, zoo_path
    from ipguard.stages.match import match_table

    start = time.perf_counter()
    params = load_params("params.yaml")
    sets = {name: load_fingerprint_set(fingerprint_path(name)) for name in params.fingerprint if fingerprint_path(name).is_file()}
    thieves = {k: v for k, v in params.postprocess.items() if k.startswith(args.prefix)}
    built = {k: v for k, v in thieves.items() if variant_path(k).exists()}
    if not built:
        raise SystemExit(f"{args.workspace}: no post-processed copy named {args.prefix}* is built")
    negatives = {k: v for k, v in params.zoo.models.items() if zoo_path(k).exists()}
    zoo = dataclasses.replace(params.zoo, models=negatives)
    table = match_table(dataclasses.replace(params, postprocess=built, zoo=zoo), sets)
    verdicts, cals = calibrate_table(table, params.evaluate.level)
    boot = params.evaluate.bootstrap
    metrics = method_metrics(table, 0.0, None, boot)
    methods: list[dict[str, Any]] = []
    for method, df in verdicts.groupby("method", sort=False):
        pos, neg = df[df["kind"] == "positive"], df[df["kind"] == "negative"]
        overall = metrics[str(method)].get("overall", {})
        worst_p, worst = cals[str(method)].worst_negative
        methods.append({
            "method": method,
            "auc": round(overall["auc"], 4), "auc_interval": [round(overall["auc_lo"], 4), round(overall["auc_hi"], 4)],
            "tpr_at_fpr0": round(overall["tpr_at_fpr"], 4),
            "positives": {r["suspect"]: {"matching_rate": round(float(r["matching_rate"]), 4), "verdict": r["verdict"],
                                         "p_value": float(f"{r['p_value']:.3g}")} for _, r in pos.iterrows()},
            "negatives_top3": {r["suspect"]: round(float(r["matching_rate"]), 4)
                               for _, r in neg.nlargest(3, "matching_rate").iterrows()},
            "negatives_pirated": sorted(neg.loc[neg["verdict"] == "pirated", "suspect"]),
            "self_check_p": round(worst_p, 6), "self_check_negative": worst,
        })
    combined = {}
    for label, chosen in (("combine", list(params.evaluate.combine)), ("combine_also", [*params.evaluate.combine, *args.also])):
        chosen = [m for m in chosen if m in sets]
        c = combined_verdicts(verdicts, chosen, params.evaluate.level)
        m = combined_metrics(c, 0.0, None, boot)
        pos = c[c["kind"] == "positive"]
        combined[label] = {"sets": chosen, "auc": round(m["overall"]["auc"], 4),
                           "auc_interval": [round(m["overall"]["auc_lo"], 4), round(m["overall"]["auc_hi"], 4)],
                           "tpr_at_fpr0": round(m["overall"]["tpr_at_fpr"], 4),
                           "positives_pirated": round(float((pos["verdict"] == "pirated").mean()), 4),
                           "negatives_pirated_loo": m["negatives_called_pirated_loo"]}
    accuracy = table.drop_duplicates("suspect").set_index("suspect")
    record = {
        "benchmark": "strong_thieves", "workspace_commit": os.popen("git rev-parse --short HEAD").read().strip(),
        "thieves": {k: {"test_accuracy": float(accuracy.at[k, "test_accuracy"]),
                        "settings": {key: v for key, v in built[k].items() if key not in {"training", "family", "data"}},
                        "autocast": built[k].get("training", {}).get("autocast")} for k in built},
        "thieves_agreement_with_owner": _agreement(sorted(built)),
        "owner_test_accuracy": float(accuracy.at["owner", "test_accuracy"]),
        "thieves_not_built": sorted(set(thieves) - set(built)),
        "negatives": len(negatives), "negatives_not_built": sorted(set(params.zoo.models) - set(negatives)),
        "sets": sorted(sets), "sets_not_built": sorted(set(params.fingerprint) - set(sets)),
        "level": params.evaluate.level, "bootstrap_resamples": boot.resamples,
        "seconds": round(time.perf_counter() - start, 1), "methods": methods, "combined": combined,
    }
    print(json.dumps(record, indent=1))
    if out_path:
        out_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
