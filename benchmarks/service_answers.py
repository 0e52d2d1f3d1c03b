"""What a prediction service's input format and an OOD-detecting service do to each fingerprint
method, on a pipeline workspace (issue 12).

    python benchmarks/service_answers.py --workspace . --out benchmarks/results/service_answers_digits.json

For every fingerprint set of the workspace (``fingerprints/raw/``) and every suspect of its
experiment (owner, negatives, post-processed copies):

- ``--uint8``: the matching rate when the points are rounded to 8-bit images (what a service that
  takes images sees) against the exact float32 points; reported per method as the owner's rounded
  matching rate, the mean change over positives and over negatives, and the share of suspects
  whose matching rate moved at all.
- an OOD-detecting service (the issue's "a copy that answers a wrong label whenever its input
  looks unlike natural images"): the owner's own copy behind a maximum-softmax-probability
  detector (Hendrycks & Gimpel, ICLR 2017) whose threshold lets 95 % of the natural test images
  through; reported per method as the share of its points the detector flags (each a wrong
  answer for the thief's copy), against the 5 % of natural images, and the share of decoys
  (the most confidently labelled test images, as ``ipguard fingerprint --decoys`` keeps) it flags.

SAC sets are scored on outputs, not on labels, so only their labels' share flagged is meaningful
here; they are listed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

PASS_SHARE = 0.95  # natural test images the detector lets through


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("."), help="a workspace after `dvc repro`")
    ap.add_argument("--decoys", type=int, default=50)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out_path = args.out.resolve() if args.out else None
    os.chdir(args.workspace)
    from ipguard.config import load_params
    from ipguard.io import load_fingerprint_set
    from ipguard.models import load_model, logits
    from ipguard.stages.common import fingerprint_path, load_split, suspect_paths

    params = load_params("params.yaml")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    suspects = []
    for name, path in suspect_paths(params):
        model, meta = load_model(str(path))
        kind = "owner" if name == "owner" else meta.get("role", "negative")
        suspects.append((name, "owner" if name == "owner" else "positive" if kind == "positive" else "negative", model))
    owner = suspects[0][2]
    test = load_split("test")
    owner_test = logits(owner, test.x)  # once: both the detector's threshold and the decoys come from it
    natural = owner_test.softmax(1).max(1).values
    threshold = float(torch.quantile(natural, 1 - PASS_SHARE))
    margin = owner_test.topk(2, dim=1).values
    decoys = torch.argsort(margin[:, 0] - margin[:, 1], descending=True, stable=True)[: args.decoys]
    decoy_flagged = float((natural[decoys] < threshold).float().mean())
    rows: list[dict[str, Any]] = []
    for method in params.fingerprint:
        inputs, labels, _, meta = load_fingerprint_set(fingerprint_path(method))
        rounded = (inputs * 255).round() / 255
        with torch.no_grad():
            flagged = float((logits(owner, inputs).softmax(1).max(1).values < threshold).float().mean())
        change: dict[str, list[float]] = {"positive": [], "negative": []}
        moved, owner_rounded = 0, None
        for name, kind, model in suspects:
            exact = float((logits(model, inputs).argmax(1) == labels).float().mean())
            approx = float((logits(model, rounded).argmax(1) == labels).float().mean())
            moved += exact != approx
            if kind == "owner":
                owner_rounded = approx
            else:
                change[kind].append(approx - exact)
        rows.append({
            "method": method, "score": meta.get("score", "match"), "points": int(labels.numel()),
            "uint8_owner_matching_rate": owner_rounded,
            "uint8_mean_change_positives": round(sum(change["positive"]) / max(1, len(change["positive"])), 4),
            "uint8_mean_change_negatives": round(sum(change["negative"]) / max(1, len(change["negative"])), 4),
            "uint8_share_of_suspects_changed": round(moved / len(suspects), 4),
            "ood_flagged_share": round(flagged, 4),
        })
    record = {"benchmark": "service_answers", "experiment": params.experiment.name, "suspects": len(suspects),
              "msp_threshold": round(threshold, 4), "natural_flagged_share": round(1 - PASS_SHARE, 4), "decoys": args.decoys,
              "decoys_flagged_share": round(decoy_flagged, 4), "seconds": round(time.perf_counter() - start, 1), "methods": rows}
    print(json.dumps(record, indent=1))
    if out_path:
        out_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
