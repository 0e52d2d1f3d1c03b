"""Wall time of one Hydra sweep under the basic, joblib and submitit_local launchers, side by side.

    dvc repro   # the digits default: the models the sweep reuses
    python benchmarks/sweep_launchers.py --values 0,1,3,10,30 --out benchmarks/results/sweep_launchers_digits.json

Runs ``python -m ipguard.sweep -m fingerprint.k=<values> hydra/launcher=<launcher>`` in the
project's root for each launcher in turn (``--repeats`` rounds, alternating launchers so that a
slow moment of the machine does not fall on one launcher only), then counts each sweep's child
runs under its MLflow parent run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def children(sweep_dir: Path) -> int | None:
    """Child runs of the sweep's MLflow parent run (None when tracking is off)."""
    parent_file = sweep_dir / "mlflow_parent_run.json"
    if not parent_file.is_file():
        return None
    from mlflow import MlflowClient

    parent = json.loads(parent_file.read_text())
    client = MlflowClient(tracking_uri=parent["uri"])
    run = client.get_run(parent["run_id"])
    found = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent['run_id']}'")
    return len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", default="0,1,3,10,30", help="the k values of the sweep")
    ap.add_argument("--launchers", default="basic,basic+threads=0,joblib,submitit_local",
                    help="launchers to compare; NAME+KEY=VALUE adds an override (threads=0: torch's own thread count)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--override", action="append", default=[], help="an override for every sweep (e.g. fingerprint.n=1000)")
    ap.add_argument("--out")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    runs: dict[str, list[dict]] = {name: [] for name in args.launchers.split(",")}
    for round_ in range(args.repeats):
        for launcher in runs:
            name, *extra = launcher.split("+")
            sweep_dir = Path("multirun") / f"bench-{launcher.replace('+', '-').replace('=', '')}-{round_}-{int(time.time())}"
            cmd = [sys.executable, "-m", "ipguard.sweep", "-m", f"fingerprint.k={args.values}",
                   f"hydra/launcher={name}", f"hydra.sweep.dir={sweep_dir}", *args.override, *extra]
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{launcher} failed:\n{proc.stderr[-3000:]}")
            jobs = len(list(sweep_dir.glob("*/result.json")))
            runs[launcher].append({"seconds": seconds, "jobs": jobs, "mlflow_children": children(sweep_dir)})
            print(f"{launcher} round {round_}: {seconds:.1f} s, {jobs} jobs", flush=True)
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    result = {"values": args.values, "overrides": args.override, "cpus": os.cpu_count(), "runs": runs, "median_seconds": median}
    if "basic" in median:
        result["share_of_basic"] = {name: s / median["basic"] for name, s in median.items()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
