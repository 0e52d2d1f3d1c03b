"""`make ui`: the real MLflow server over a store filled by a tiny run, checked through its REST
API and, where Debian's chromium is installed (`.ci/run` installs it), in a headless browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def store(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The match and evaluate stages of the tiny experiment, recorded into a fresh MLflow store."""
    from ipguard.config import params_from_dict
    from ipguard.stages.evaluate import evaluate
    from ipguard.stages.match import match_all

    root = tmp_path_factory.mktemp("ui")
    shutil.copytree(workspace, root / "project")
    cfg = yaml.safe_load((root / "project/params.yaml").read_text())
    cfg["tracking"].update(enabled=True, uri=f"sqlite:///{root / 'mlflow.db'}")
    old = Path.cwd()
    os.chdir(root / "project")
    try:
        params = params_from_dict(cfg)
        match_all(params)
        evaluate(params)
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[str]:
    """`make ui` on a free loopback port; stopped (its whole process group) whatever happens."""
    port = _free_port()
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(["make", "--no-print-directory", "ui", f"PORT={port}", f"TRACKING_URI=sqlite:///{store / 'mlflow.db'}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow server did not come up: {(store / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        with socket.socket() as s:  # the port is free again: nothing was left running
            assert s.connect_ex(("127.0.0.1", port)) != 0


def _experiment(base: str) -> dict:
    found = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=ipguard-tiny")
    return found["experiment"]


def test_server_serves_the_runs_params_and_metrics(server: str, workspace: Path) -> None:
    exp = _experiment(server)
    # Tagged as model development, so that MLflow 3's UI opens on the runs, not a GenAI overview.
    assert {t["key"]: t["value"] for t in exp.get("tags", [])}.get("mlflow.experimentKind") == "custom_model_development"
    runs = _api(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert {"match", "evaluate"} <= set(by_name)
    evaluate = by_name["evaluate"]
    metrics = {m["key"]: m["value"] for m in evaluate["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in evaluate["data"]["params"]}
    expected = json.loads((workspace / "reports/tiny/metrics.json").read_text())["methods"]["ipguard"]["overall"]
    assert metrics["ipguard.aruc"] == pytest.approx(expected["aruc"])
    assert params["max_fpr"] == "0.01"
    artifacts = _api(server, f"/api/2.0/mlflow/artifacts/list?run_id={evaluate['info']['run_id']}")
    assert "report.md" in {f["path"] for f in artifacts["files"]}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_experiment_page_shows_the_runs_in_a_browser(server: str, store: Path, workspace: Path) -> None:
    exp = _experiment(server)
    # The experiment's runs with their metrics drawn as charts (MLflow 3 opens on a GenAI overview
    # otherwise, and its runs table hides metric columns until chosen).
    url = f"{server}/#/experiments/{exp['experiment_id']}/runs?compareRunsMode=CHART"
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--window-size=1800,1000", "--virtual-time-budget=30000", f"--user-data-dir={store / 'chromium'}"]
    runs = _api(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    evaluate = next(r for r in runs if r["info"]["run_name"] == "evaluate")
    first = min(evaluate["data"]["metrics"], key=lambda m: m["key"])
    # The page as rendered by the browser (not the HTML shell): the runs, and the first metric
    # chart (metrics are drawn in name order) with its value. Like a test waiting for a selector,
    # it looks up to three times: a cold browser (fonts, profile) can use up the first budget.
    for _attempt in range(3):
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        if f">{first['key']}<" in dom:
            break
    assert "ipguard-tiny" in dom and ">evaluate<" in dom and ">match<" in dom
    assert f">{first['key']}<" in dom and f"{first['value']:.2f}" in dom
    # What a newcomer gets from the link `make ui` prints: the runs table, not a GenAI overview of
    # traces. (MLflow 3.17's UI picks the page by its GenAI / model-training switch, kept in the
    # browser, and reads the experiment's kind tag only where that switch is off.)
    landing = f"{server}/#/experiments/{exp['experiment_id']}?workflowType=machine_learning"
    for _attempt in range(3):
        dom = subprocess.run([*flags, "--dump-dom", landing], capture_output=True, text=True, timeout=180).stdout
        if ">evaluate<" in dom:
            break
    assert ">evaluate<" in dom and ">match<" in dom, "the experiment's landing page does not list its runs"
    shot = store / "mlflow_ui.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000
    target = os.environ.get("IPGUARD_UI_SCREENSHOT")
    if target:
        shutil.copy(shot, target)
