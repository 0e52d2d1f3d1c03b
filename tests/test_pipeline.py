"""The pipeline end to end: real DVC on a tiny experiment, and the MLflow record of its stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dvc(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    dvc = Path(sys.executable).with_name("dvc")
    cmd = [str(dvc) if dvc.exists() else "dvc", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def dvc_project(tiny_params_file: Path) -> Path:
    """A scratch DVC project: this repository's dvc.yaml and code, the tiny params."""
    root = tiny_params_file.parent
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root / "src"), IPGUARD_PROGRESS="0", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_tiny_experiment_runs_every_stage_with_dvc(dvc_project: Path) -> None:
    """`dvc repro` runs every stage of a tiny experiment; a second run does nothing.

    Its wall time (under a minute on 2 idle cores) is reported, not asserted: timings belong in
    benchmarks, and a busy machine must not fail the suite.
    """
    env = _env(dvc_project, IPGUARD_TRACKING="0")
    assert _dvc("init", "-q", cwd=dvc_project, env=env).returncode == 0
    _dvc("config", "core.analytics", "false", cwd=dvc_project, env=env)
    start = time.perf_counter()
    proc = _dvc("repro", cwd=dvc_project, env=env)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    stages = {"prepare", "train_owner", "match", "evaluate", "effects"}
    stages |= {f"train@{k}" for k in params["zoo"]["models"]} | {f"postprocess@{k}" for k in params["postprocess"]}
    stages |= {f"fingerprint@{k}" for k in params["fingerprint"]}
    for stage in stages:
        assert f"Running stage '{stage}'" in proc.stdout, stage
    print(f"tiny experiment: dvc repro of {len(stages)} stages took {seconds:.1f} s")
    report = dvc_project / "reports/tiny"
    metrics = json.loads((report / "metrics.json").read_text())
    overall = metrics["methods"]["ipguard"]["overall"]
    assert 0.0 <= overall["aruc"] <= 1.0 and 0.0 <= overall["auc"] <= 1.0
    assert metrics["methods"]["ipguard"]["owner_matching_rate"] == 1.0
    assert set(metrics["methods"]["ipguard"]["families"]) == {"ftll", "rtal", "prune", "quantization", "distillation"}
    text = (report / "report.md").read_text()
    assert "| ipguard |" in text and "Accuracy of every model" in text
    assert (report / "figures/robustness_uniqueness.png").stat().st_size > 1000
    again = _dvc("repro", cwd=dvc_project, env=env)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    assert "up to date" in again.stdout
    shown = _dvc("metrics", "show", "--json", cwd=dvc_project, env=env)
    assert shown.returncode == 0 and "aruc" in shown.stdout
    plots = _dvc("plots", "show", "-o", str(dvc_project / "plots_html"), cwd=dvc_project, env=env)
    assert plots.returncode == 0, plots.stderr
    assert (dvc_project / "plots_html/index.html").is_file()
    drawn = json.loads(_dvc("plots", "show", "--json", cwd=dvc_project, env=env).stdout)["data"]
    shown = " ".join(drawn)
    for source in ("plots/curves/ipguard.csv", "plots/roc/ipguard.csv", "plots/matching_rates/ipguard.csv", "plots/effects_k.csv"):
        assert source in shown, f"dvc plots show does not draw {source}"


def test_stages_are_recorded_in_mlflow(tiny_params_file: Path) -> None:
    """Each stage run is an MLflow run in the experiment's MLflow experiment, with params and metrics."""
    from mlflow import MlflowClient

    root = tiny_params_file.parent
    env = _env(root)
    env["PYTHONPATH"] = str(ROOT / "src")
    # prepare logs in its own process; train through the launcher dvc.yaml uses (a tracking worker).
    for cmd in (["ipguard.stages.prepare"], ["ipguard.stages", "train", "owner"]):
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=root, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ipguard-tiny")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"prepare", "train:owner"}
    train = runs["train:owner"]
    assert train.info.status == "FINISHED"
    assert train.data.params["model.arch"] == "cnn" and train.data.params["training.epochs"] == "8"
    assert 0.8 < train.data.metrics["test_accuracy"] <= 1.0
    assert len(client.get_metric_history(train.info.run_id, "train_loss")) == 8
    assert runs["prepare"].data.metrics["size.test"] > 0
    artifacts = [a.path for a in client.list_artifacts(train.info.run_id)]
    assert "owner.json" in artifacts
    assert train.info.end_time >= train.info.start_time


def test_tracking_failure_warns_and_still_writes_outputs(tiny_params_file: Path) -> None:
    cfg = yaml.safe_load(tiny_params_file.read_text())
    # A store below a regular file can never be created.
    cfg["tracking"]["uri"] = f"sqlite:///{tiny_params_file}/mlflow.db"
    tiny_params_file.write_text(yaml.safe_dump(cfg))
    root = tiny_params_file.parent
    env = _env(root)
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-m", "ipguard.stages", "prepare"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "MLflow tracking failed" in proc.stderr
    assert (root / "data/prepared/test.safetensors").is_file()
