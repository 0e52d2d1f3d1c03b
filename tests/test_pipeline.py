"""The pipeline end to end: real DVC on a tiny experiment, and the MLflow record of its stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
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
    shutil.copytree(ROOT / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("dvc.lock"))
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
    # The foreach stages are in pipelines/NAME/dvc.yaml (see dvc.yaml); DVC names them by file.
    stages = {"prepare", "train_owner", "match", "evaluate", "effects"}
    stages |= {f"pipelines/train/dvc.yaml:train@{k}" for k in params["zoo"]["models"]}
    stages |= {f"pipelines/postprocess/dvc.yaml:postprocess@{k}" for k in params["postprocess"]}
    stages |= {f"pipelines/fingerprint/dvc.yaml:fingerprint@{k}" for k in params["fingerprint"]}
    for stage in stages:
        assert f"Running stage '{stage}'" in proc.stdout, stage
    print(f"tiny experiment: dvc repro of {len(stages)} stages took {seconds:.1f} s")
    report = dvc_project / "reports/tiny"
    metrics = json.loads((report / "metrics.json").read_text())
    overall = metrics["methods"]["ipguard"]["overall"]
    assert 0.0 <= overall["aruc"] <= 1.0 and 0.0 <= overall["auc"] <= 1.0
    assert metrics["methods"]["ipguard"]["owner_matching_rate"] == 1.0
    # SAC's label-only set: a similarity (the owner's is 1), calibrated by the continuous null.
    assert metrics["methods"]["sac_label"]["owner_matching_rate"] == 1.0
    assert metrics["methods"]["sac_label"]["calibration"]["kind"] == "continuous"
    # Every reported number is on the test part: its families only (quantization has a copy in each part).
    table = pd.read_csv(report / "matching_rates.csv")
    assert set(table.loc[table["method"] == "sac_label", "score"]) == {"sac_label"}
    assert set(table.loc[table["method"] == "ipguard", "score"]) == {"match"}
    test_families = set(table[(table["part"] == "test") & (table["kind"] == "positive")]["family"])
    assert set(metrics["methods"]["ipguard"]["families"]) == test_families and "quantization" in test_families
    assert test_families < {"ftll", "rtal", "prune", "quantization", "distillation"}
    split = metrics["split"]
    assert split["dev_positives"] + split["test_positives"] == 6 and split["dev_negatives"] + split["test_negatives"] == 3
    assert overall["positives"] == split["test_positives"] and overall["negatives"] == split["test_negatives"]
    text = (report / "report.md").read_text()
    assert "| ipguard |" in text and "Accuracy of every model" in text
    assert "## Dev and test parts" in text and "Chosen on dev" in text
    for part in ("dev", "test"):
        suspects = ", ".join(table[(table["part"] == part) & (table["kind"] == "positive")]["suspect"].unique())
        assert f"| {part} |" in text and suspects in text
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
    for source in ("plots/curves/ipguard.csv", "plots/roc/ipguard.csv", "plots/matching_rates/ipguard.csv", "plots/effects_k/ipguard.csv"):
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


def _dirty(composed: dict, **changes: object) -> dict:
    import copy

    cfg = copy.deepcopy(composed)
    cfg["fingerprint"]["akh"]["pool"] = "other"
    cfg.update(changes)
    return cfg


def test_pools_that_models_trained_on_are_refused(composed: dict, tmp_path: Path) -> None:
    """akh drawing from `other`, which a negative (or a copy) trains on: refused with the keys named."""
    from ipguard.config import params_from_dict
    from ipguard.errors import ConfigError
    from ipguard.stages.common import check_pools
    from ipguard.stages.fingerprint import fingerprint

    check_pools(params_from_dict(composed))  # the shipped config is clean
    params = params_from_dict(_dirty(composed))
    with pytest.raises(ConfigError, match=r"fingerprint\.akh\.pool: pool 'other' .*zoo\.models\.cnn_s5_other\.data"):
        fingerprint(params, "akh")
    # A copy that trains on the split (distillation on `other`) taints it as well, ...
    only_owner = {k: v for k, v in composed["zoo"]["models"].items() if v.get("data", "owner") == "owner"}
    distill = {"method": "distill", "family": "distillation", "data": "other", "seed": 0}
    cfg = _dirty(composed, zoo={"models": only_owner}, postprocess={**composed["postprocess"], "distill_same": distill})
    with pytest.raises(ConfigError, match=r"postprocess\.distill_same\.data"):
        check_pools(params_from_dict(cfg))
    # ... and so does a model imported from a file (its training data is taken to be the training part).
    imported = {"m": {"arch": "cnn", "source": "file", "path": "w.pt"}}
    with pytest.raises(ConfigError, match=r"zoo\.models\.m \(source: file"):
        check_pools(params_from_dict(_dirty(composed, zoo={"models": {**only_owner, **imported}})))
    check_pools(params_from_dict(_dirty(composed, zoo={"models": only_owner})))  # nothing trains on `other`: allowed
    cfg = _dirty(composed)
    cfg["fingerprint"]["ipguard"]["pool"] = "owner"
    with pytest.raises(ConfigError, match=r"fingerprint\.ipguard\.pool: unknown pool 'owner'"):
        check_pools(params_from_dict(cfg))
    # Through the stage launcher: one line naming the key, exit status 2.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_dirty(composed)))
    proc = subprocess.run([sys.executable, "-m", "ipguard.stages", "fingerprint", "akh"], cwd=tmp_path,
                          env=_env(tmp_path, IPGUARD_TRACKING="0") | {"PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and "fingerprint.akh.pool" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("section", "key", "value"), [("split", "dev_fraction", 1.0), ("bootstrap", "confidence", 1.5),
                                                       ("bootstrap", "resamples", 0)])
def test_bad_split_or_bootstrap_settings_name_the_key(composed: dict, section: str, key: str, value: float) -> None:
    import copy

    from ipguard.config import params_from_dict
    from ipguard.errors import ConfigError
    from ipguard.stages.suspects import check_evaluate

    cfg = copy.deepcopy(composed)
    cfg["evaluate"][section][key] = value
    with pytest.raises(ConfigError, match=rf"evaluate\.{section}\.{key}"):
        check_evaluate(params_from_dict(cfg))


@pytest.mark.parametrize(("target", "message"), [({"name": "x", "auc": 1.5, "families": ["prune"]}, r"evaluate\.target\[0\]\.auc"),
                                                 ({"name": "x", "auc": 0.9, "families": []}, r"evaluate\.target\[0\]\.families"),
                                                 ({"name": "x", "auc": 0.9, "famlies": ["prune"]}, "famlies")])
def test_bad_target_names_the_key(composed: dict, target: dict, message: str) -> None:
    import copy

    from ipguard.config import params_from_dict
    from ipguard.errors import ConfigError
    from ipguard.stages.suspects import check_evaluate

    cfg = copy.deepcopy(composed)
    cfg["evaluate"]["target"] = [target]
    with pytest.raises(ConfigError, match=message):
        check_evaluate(params_from_dict(cfg))


@pytest.mark.parametrize(("combine", "message"), [(["ipguard", "akk"], "'akk' is not a fingerprint entry"),
                                                  (["ipguard"], "two or more different"),
                                                  (["akh", "akh"], "two or more different")])
def test_bad_combination_names_the_key(composed: dict, combine: list[str], message: str) -> None:
    import copy

    from ipguard.config import params_from_dict
    from ipguard.errors import ConfigError
    from ipguard.stages.suspects import check_evaluate

    cfg = copy.deepcopy(composed)
    cfg["evaluate"]["combine"] = combine
    with pytest.raises(ConfigError, match=rf"evaluate\.combine: .*{message}"):
        check_evaluate(params_from_dict(cfg))
    cfg["evaluate"]["combine"] = []
    check_evaluate(params_from_dict(cfg))
