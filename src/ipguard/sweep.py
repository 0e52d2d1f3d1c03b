"""Hydra sweeps over fingerprint settings on the models the pipeline has already made.

    dvc repro                                   # once: the zoo, the variants, params.yaml
    python -m ipguard.sweep -m fingerprint.k=0,1,3,10,30 fingerprint.n=25,100
    python -m ipguard.sweep -m fingerprint.k=0,1,3,10,30 hydra/launcher=joblib
    python -m ipguard.sweep -m fingerprint.k=0,1,3,10,30 hydra/launcher=submitit_local   # or submitit_slurm

Each job generates one fingerprint set (the ``method`` entry of ``params.yaml``'s ``fingerprint``
section, with the job's overrides), matches every suspect of the current experiment (the owner,
``models/zoo``, ``models/variants``; nothing is retrained), and writes its metrics, tables and
figures into its Hydra output folder. A sweep chooses settings, so its metrics, figures and
curve tables are those of the dev part of the suspects (``evaluate.split``); the test part's
headline metrics are kept as ``test.aruc``, ``test.auc``, ... to see how a choice holds up. With tracking on, each job is one MLflow run holding its
overrides as params, its metrics and its figures, nested under one parent run per sweep (the
:class:`MlflowParentRun` callback), which ends with the sweep's summary table and, when k varies,
ARUC against k.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_FILE = "mlflow_parent_run.json"
RESULT_FILE = "result.json"


def _job_name(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"


def _entry(params: Any, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The swept fingerprint entry (params.yaml's, with this job's non-null overrides) and the overrides."""
    from ipguard.errors import ConfigError

    if cfg.method not in params.fingerprint:
        raise ConfigError(f"method: '{cfg.method}' is not an entry of {cfg.params_file}'s fingerprint section "
                          f"(entries: {', '.join(params.fingerprint)})")
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.fingerprint, resolve=True).items() if v is not None}  # type: ignore[union-attr]
    return {**params.fingerprint[cfg.method], **overrides}, overrides


def run_job(cfg: DictConfig, outdir: Path) -> dict[str, Any]:
    """Generate, match and evaluate one point of the sweep; writes ``outdir`` and returns the result."""
    import torch

    start_ms = int(time.time() * 1000)
    from ipguard.config import Params, load_params
    from ipguard.errors import ConfigError
    from ipguard.fingerprint import RESERVED_KEYS, check_method, generate
    from ipguard.report import calibrate_table, in_part, method_metrics, plot_figures, plot_tables, verdict_shares
    from ipguard.stages.common import check_pool, load_pool, load_zoo_model, setup_runtime, suspect_paths
    from ipguard.stages.match import match_table

    params = load_params(cfg.params_file)
    setup_runtime(params.runtime)
    if cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    missing = [str(path) for _, path in suspect_paths(params) if not path.is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: not found; the sweep reuses the pipeline's models (run `dvc repro` first)")
    entry, overrides = _entry(params, cfg)
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    check_method(entry["method"], kwargs, f"fingerprint ({cfg.method} with the sweep's overrides)")
    check_pool(params, str(entry.get("pool", "test")), f"fingerprint.{cfg.method}.pool (with the sweep's overrides)")
    owner, _ = load_zoo_model(Params.OWNER, params.runtime.device)
    ds = params.dataset
    fp = generate(entry["method"], owner, load_pool(entry.get("pool", "test")), tuple(ds.input_shape), ds.num_classes, **kwargs)
    name = str(cfg.method)
    table = match_table(params, {name: (fp.inputs, fp.labels, fp.outputs, {"score": fp.score})})
    max_fpr, level = params.evaluate.max_fpr, params.evaluate.level
    # A sweep is for choosing settings: its headline metrics are the dev part's; the test part's
    # are kept beside them (``test.*``) to see how a choice holds up, not to choose by.
    metrics = method_metrics(table, max_fpr, part="dev")
    test_metrics = method_metrics(table, max_fpr, part="test")
    verdicts, _ = calibrate_table(table, level)
    dev = in_part(table, "dev")
    outdir.mkdir(parents=True, exist_ok=True)
    table.to_csv(outdir / "matching_rates.csv", index=False, float_format="%.6f", lineterminator="\n")
    verdicts.to_csv(outdir / "verdicts.csv", index=False, float_format="%.6g", lineterminator="\n")
    for sub, tables in plot_tables(dev).items():
        for method, df in tables.items():
            (outdir / sub).mkdir(exist_ok=True)
            df.to_csv(outdir / sub / f"{method}.csv", index=False, float_format="%.6g", lineterminator="\n")
    figures = plot_figures(dev, metrics, outdir / "figures")
    result = {
        "experiment": params.experiment.name,
        "method": name,
        "overrides": overrides,
        "fingerprint": entry,
        "metrics": {
            **metrics[name].get("overall", {}),
            **{f"{family}.aruc": m["aruc"] for family, m in metrics[name].get("families", {}).items()},
            **verdict_shares(in_part(verdicts, "dev")),
            **{f"test.{k}": v for k, v in test_metrics[name].get("overall", {}).items()},
            **{f"generation.{k}": v for k, v in fp.stats().items()},
        },
        "figures": [str(p) for p in figures],
        "start_ms": start_ms,
        "end_ms": int(time.time() * 1000),
    }
    (outdir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def _log_child(params_file: str, result: dict[str, Any], outdir: Path, parent: Mapping[str, str] | None, client: Any = None) -> None:
    """The job's MLflow run (a child of the sweep's parent run when there is one)."""
    from ipguard.config import load_params
    from ipguard.tracking import flatten, log_payload, tracking_enabled

    tracking = load_params(params_file).tracking
    if not tracking_enabled(tracking):
        return
    tags = {"stage": "sweep", "sweep.method": result["method"]}
    if parent:
        tags["mlflow.parentRunId"] = parent["run_id"]
    metrics = [(k, float(v), 0) for k, v in result["metrics"].items() if isinstance(v, (int, float))]
    log_payload({
        "uri": tracking.uri, "experiment": f"{tracking.experiment_prefix}-{result['experiment']}",
        "run_name": f"sweep:{_job_name(result['overrides'])}", "tags": tags, "start_ms": result["start_ms"],
        "end_ms": result["end_ms"], "status": "FINISHED",
        "params": {**{k: str(v) for k, v in flatten({"fingerprint": result["fingerprint"]}).items()},
                   **{f"override.{k}": str(v) for k, v in result["overrides"].items()}},
        "metrics": metrics,
        "artifacts": [(str(outdir / RESULT_FILE), None), (str(outdir / "matching_rates.csv"), None),
                      (str(outdir / "verdicts.csv"), None), (str(outdir / "figures"), "figures"),
                      (str(outdir / "curves"), "plots/curves"), (str(outdir / "roc"), "plots/roc"),
                      (str(outdir / "matching_rates"), "plots/matching_rates")],
    }, client)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    """One job of the sweep; returns the set's dev ARUC (what an optimising sweeper would maximise)."""
    import sys

    from ipguard.errors import IpguardError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hc = HydraConfig.get()
    outdir = Path(hc.runtime.output_dir)
    try:
        result = run_job(cfg, outdir)
    except IpguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if hc.mode.name != "MULTIRUN":
        _log_child(cfg.params_file, result, outdir, None)
    # In a multirun the sweep's own process logs every job (MlflowParentRun.on_multirun_end):
    # jobs in other processes or on other machines then need neither MLflow nor the store.
    print(f"{_job_name(result['overrides'])}: dev ARUC {result['metrics'].get('aruc', float('nan')):.3f}, "
          f"AUC {result['metrics'].get('auc', float('nan')):.3f}")
    return float(result["metrics"].get("aruc", float("nan")))


class MlflowParentRun(Callback):
    """One MLflow parent run per multirun, opened before the first job; at the end, every job's
    run (from its ``result.json``) is logged under it, with the sweep's summary on the parent.

    The parent's id is kept in ``<sweep dir>/mlflow_parent_run.json``. Jobs themselves never
    touch MLflow: launchers such as joblib and submitit run them in other processes or on other
    machines, where importing MLflow (~2.5 s per process) and writing one SQLite store from many
    processes would cost more than the job.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ipguard.config import load_params
        from ipguard.tracking import tracking_enabled

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            params = load_params(config.params_file)
        except Exception:  # noqa: BLE001 - the jobs report a bad params file themselves
            return
        if not tracking_enabled(params.tracking):
            return
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=params.tracking.uri)
            name = f"{params.tracking.experiment_prefix}-{params.experiment.name}"
            exp = client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else client.create_experiment(name)
            overrides = " ".join(config.hydra.overrides.task)
            run = client.create_run(exp_id, run_name=f"sweep {config.method}: {overrides}",
                                    tags={"stage": "sweep-parent", "sweep.dir": str(sweep_dir)})
            client.log_param(run.info.run_id, "overrides", overrides)
            client.log_param(run.info.run_id, "launcher", str(config.hydra.launcher._target_))
            (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": run.info.run_id, "uri": params.tracking.uri}))
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a sweep
            print(f"ipguard: warning: MLflow parent run not created ({type(exc).__name__}: {exc})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results, folders = [], []
        for path in sorted(sweep_dir.glob(f"*/{RESULT_FILE}"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
            results.append(json.loads(path.read_text()))
            folders.append(path.parent)
        written = write_summary(results, sweep_dir)
        parent_file = sweep_dir / PARENT_FILE
        if not parent_file.is_file():
            return
        parent = json.loads(parent_file.read_text())
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=parent["uri"])
            for result, folder in zip(results, folders):
                _log_child(config.params_file, result, folder, parent, client)
            for path in written:
                client.log_artifact(parent["run_id"], str(path))
            best = max((r["metrics"].get("aruc", float("-inf")) for r in results), default=None)
            if best is not None:
                client.log_metric(parent["run_id"], "best_aruc", float(best))
            client.log_metric(parent["run_id"], "jobs", float(len(results)))
            client.set_terminated(parent["run_id"], "FINISHED")
        except Exception as exc:  # noqa: BLE001
            print(f"ipguard: warning: MLflow parent run not closed ({type(exc).__name__}: {exc})")


def write_summary(results: list[dict[str, Any]], outdir: Path) -> list[Path]:
    """``sweep.csv`` (one row per job) and, when k varies, ``aruc_vs_k.png``. Returns the paths."""
    import pandas as pd

    if not results:
        return []
    rows = [{**r["overrides"], **{k: v for k, v in r["metrics"].items() if not k.startswith("generation.")},
             "seconds": r["metrics"].get("generation.seconds")} for r in results]
    table = pd.DataFrame(rows)
    written = [outdir / "sweep.csv"]
    table.to_csv(written[0], index=False, float_format="%.6g", lineterminator="\n")
    if "k" in table and table["k"].nunique() > 1 and "aruc" in table:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ipguard.report import save_figure

        fig, ax = plt.subplots(figsize=(5, 3.6))
        groups = [c for c in table.columns if c in {"n", "lr", "start", "target", "max_iter", "seed"} and table[c].nunique() > 1]
        for key, df in (table.groupby(groups) if groups else [((), table)]):
            df = df.sort_values("k")
            label = ", ".join(f"{g}={v}" for g, v in zip(groups, key if isinstance(key, tuple) else (key,))) or "ARUC"
            ax.plot(df["k"], df["aruc"], marker="o", label=label)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("margin k (logits)")
        ax.set_ylabel("ARUC (dev part)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{results[0]['method']}: ARUC against k ({results[0]['experiment']})")
        ax.legend(fontsize=8)
        written.append(save_figure(fig, outdir / "aruc_vs_k.png"))
    return written


if __name__ == "__main__":
    main()
