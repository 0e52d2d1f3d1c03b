"""Stage ``match``: the matching rate of every suspect on every fingerprint set.

Suspects are the owner, the independent models of the zoo (negatives) and the post-processed
copies (positives); each positive and negative is assigned to the ``dev`` or the ``test`` part
(``evaluate.split``; the ``part`` column). Reads ``zoo``, ``postprocess``, ``fingerprint`` (which
entries exist, and their pools: refused when a model trains on them), ``evaluate.batch_size`` and
``evaluate.split``; writes ``reports/<experiment>/matching_rates.csv``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from ipguard.config import Params
from ipguard.io import load_fingerprint_set, write_text
from ipguard.models import load_model
from ipguard.stages.common import check_pools, fingerprint_path, reports_dir, run_stage, suspect_paths
from ipguard.stages.suspects import suspect_parts
from ipguard.tracking import stage_run
from ipguard.verify import score

KIND = {"owner": "owner", "independent": "negative", "positive": "positive"}


def match_table(
    params: Params, sets: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Mapping[str, Any]]],
) -> pd.DataFrame:
    """One row per (fingerprint set, suspect): matches, matching rate, the suspect's part
    (``dev``/``test`` by ``evaluate.split``; ``none`` for the owner) and its sidecar facts.

    ``score`` says what ``matching_rate`` holds: the share of points labelled as the owner did
    (``match``), or SAC's similarity (``sac``, ``sac_label``; ``matches`` is then empty). Either
    way, higher means more like the owner.
    """
    rows = []
    metas = {}
    for name, path in suspect_paths(params):
        model, meta = load_model(str(path), params.runtime.device)
        metas[name] = meta
        for method, (inputs, labels, outputs, fmeta) in sets.items():
            result = score(model, inputs, labels, str(fmeta.get("score", "match")), outputs, params.evaluate.batch_size)
            rows.append({
                "method": method,
                "suspect": name,
                "kind": KIND[meta["role"]],
                "part": "",
                "family": meta["family"],
                "arch": meta["arch"],
                "storage": meta["storage"],
                "lineage": meta["lineage"],
                "test_accuracy": meta["test_accuracy"],
                "score": result.kind,
                "matches": result.matches,
                "n": result.n,
                "matching_rate": result.score,
                "fingerprint_sha256": fmeta.get("sha256"),
            })
    parts = suspect_parts(params, [(name, KIND[m["role"]], str(m["family"])) for name, m in metas.items()])
    for row in rows:
        row["part"] = parts[row["suspect"]]
    return pd.DataFrame(rows)


def match_all(params: Params, key: str | None = None) -> None:
    # The pools are checked here too: this stage reruns whenever zoo or postprocess change.
    check_pools(params)
    sets = {name: load_fingerprint_set(fingerprint_path(name)) for name in params.fingerprint}
    table = match_table(params, sets)
    out = reports_dir(params) / "matching_rates.csv"
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, float_format="%.6f", lineterminator="\n")
    write_text(out, buffer.getvalue())
    with stage_run(params.tracking, params.experiment.name, "match", {"stage": "match"}) as run:
        run.log_params({"suspects": len(table["suspect"].unique()), "methods": ",".join(sets)})
        run.log_artifact(out)


def main() -> None:
    run_stage(__doc__ or "", match_all)


if __name__ == "__main__":
    main()
