"""Hydra sweeps (``python -m ipguard.sweep``) on the tiny experiment's models, through the real
Hydra command line, its launchers and a real MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture()
def project(workspace: Path, tmp_path: Path) -> Path:
    """A copy of the tiny experiment's folder (params.yaml and every model) with tracking on."""
    root = tmp_path / "project"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("reports"))
    shutil.copytree(workspace / "reports", root / "reports_pipeline")
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    cfg["tracking"].update(enabled=True, uri=f"sqlite:///{root / 'mlflow.db'}")
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def _sweep(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "ipguard.sweep", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ipguard-tiny")
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_sweep_jobs_are_child_runs_and_agree_with_the_pipeline(project: Path, launcher: str) -> None:
    out = _sweep(project, "-m", "fingerprint.k=0.3,3", f"hydra/launcher={launcher}", "hydra.sweep.dir=multirun/s")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = project / "multirun/s"
    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in range(2)]
    assert [r["overrides"] for r in results] == [{"k": 0.3}, {"k": 3}]
    # The same k, seed, models and parts as the effects stage's fresh sets (at the full n): the same
    # ARUC on dev (the sweep's headline) and on test.
    grid = json.loads((project / "reports_pipeline/tiny/effects.json").read_text())["grid"]
    effects = {row["k"]: row for row in grid if row["method"] == "ipguard" and row["n"] == 30}
    for r in results:
        row = effects[float(r["overrides"]["k"])]
        assert r["metrics"]["aruc"] == pytest.approx(row["dev"]["aruc"])
        assert r["metrics"]["test.aruc"] == pytest.approx(row["test"]["aruc"])
        assert (sweep / str(results.index(r)) / "figures/roc.png").stat().st_size > 1000
    assert (sweep / "sweep.csv").read_text().count("\n") == 3
    assert (sweep / "aruc_vs_k.png").stat().st_size > 1000
    runs = _runs(project)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep-parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.data.params["override.k"] for c in children) == ["0.3", "3"]
    assert all("aruc" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    assert parents[0].data.metrics["jobs"] == 2


def test_sweep_refuses_bad_input_with_exit_2(project: Path, tmp_path: Path) -> None:
    out = _sweep(project, "method=nope")
    assert out.returncode == 2 and "method: 'nope' is not an entry" in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(project / "params.yaml", empty / "params.yaml")
    out = _sweep(empty)
    assert out.returncode == 2 and "run `dvc repro` first" in out.stderr
    out = _sweep(project, "fingerprint.k=-1")
    assert out.returncode == 2 and "k >= 0" in out.stderr


def test_slurm_launcher_config_composes_onto_submitit() -> None:
    """`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) is submitit's SLURM launcher."""
    from hydra import compose, initialize_config_dir

    from ipguard.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.hydra.callbacks.mlflow_parent._target_ == "ipguard.sweep.MlflowParentRun"
