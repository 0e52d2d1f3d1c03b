"""MLflow mirror of the pipeline's runs (params, metrics, tables and figures).

DVC's outputs are the record; MLflow is for browsing. A stage records what it logs in memory
(:class:`Recorder`); at the end of the block the record becomes one MLflow run, either here or
in a tracking worker (``python -m ipguard.tracking``) that the stage launcher
(``python -m ipguard.stages``) starts beside the stage. The worker imports MLflow on the other
core while the stage imports torch and works: that import is most of a short stage's cost. The
stage does not wait for the run to be logged: the worker finishes it, about a second later, while
DVC goes on (so the last stage's run appears a moment after ``dvc repro`` returns).

Tracking is best effort: if the store cannot be reached or written, a warning goes to stderr
and the stage's DVC outputs are written as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ipguard.config import TrackingCfg

# Set by the stage launcher: the worker that will log this process's run, and when it started.
WORKER: subprocess.Popen[bytes] | None = None
STARTED_MS: int | None = None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, lists kept as text."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = obj
    return out


def tracking_enabled(cfg: TrackingCfg) -> bool:
    """``tracking.enabled``, unless ``IPGUARD_TRACKING=0`` turns it off."""
    return cfg.enabled and os.environ.get("IPGUARD_TRACKING", "1") not in {"0", "false", "no"}


class Recorder:
    """What one stage run logs: params, metrics (with steps) and artifact paths."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.metrics: list[tuple[str, float, int]] = []
        self.artifacts: list[tuple[str, str | None]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({k: str(v)[:6000] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for key, value in flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.metrics.append((key.replace("@", "_at_"), float(value), step or 0))

    def log_history(self, key: str, values: list[float]) -> None:
        """One metric's values per step (epoch)."""
        self.metrics.extend((key, float(v), step) for step, v in enumerate(values))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.artifacts.append((str(Path(path).resolve()), artifact_path))


# Our experiments train and compare models. MLflow 3's UI reads this tag to open an experiment on
# its runs rather than its GenAI overview ("Traces 0") only where its GenAI / model-training switch
# is off; 3.17 has it on, so `make ui` prints a link that sets the switch (workflowType).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def log_payload(payload: Mapping[str, Any], client: Any = None) -> bool:
    """Write one recorded run to MLflow (through ``client`` if given: one client for many runs
    saves opening the store each time); on any failure warn on stderr and return False."""
    try:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client = client or MlflowClient(tracking_uri=payload["uri"])
        experiment = client.get_experiment_by_name(payload["experiment"])
        if experiment is None:
            experiment_id = client.create_experiment(payload["experiment"], tags=EXPERIMENT_TAGS)
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_TAGS.items():  # an experiment made by an older ipguard
                if experiment.tags.get(key) != value:
                    client.set_experiment_tag(experiment_id, key, value)
        run = client.create_run(experiment_id, start_time=payload["start_ms"], tags=payload["tags"],
                                run_name=payload["run_name"])
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in payload["params"].items()]
        metrics = [Metric(k, v, payload["end_ms"], step) for k, v, step in payload["metrics"]]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
            client.log_batch(run_id, params=params[i : i + 100], metrics=metrics[i : i + 100])
        for path, artifact_path in payload["artifacts"]:
            if Path(path).is_dir():
                client.log_artifacts(run_id, path, artifact_path)
            elif Path(path).is_file():
                client.log_artifact(run_id, path, artifact_path)
        client.set_terminated(run_id, payload["status"], end_time=payload["end_ms"])
        return True
    except Exception as exc:  # noqa: BLE001 - tracking must never stop a stage
        print(f"ipguard: warning: MLflow tracking failed for run '{payload.get('run_name')}' "
              f"({type(exc).__name__}: {str(exc)[:300]}); the stage's DVC outputs are written regardless",
              file=sys.stderr)
        return False


def start_worker() -> subprocess.Popen[bytes]:
    """A tracking worker: it imports MLflow now and logs the run it is sent on stdin."""
    return subprocess.Popen([sys.executable, "-m", "ipguard.tracking"], stdin=subprocess.PIPE)


def finish_worker(worker: subprocess.Popen[bytes], payload: Mapping[str, Any] | None, wait: bool = True) -> None:
    """Send the run (or nothing) to the worker; wait until it has been logged unless ``wait`` is False.

    A stage does not wait (see :func:`stage_run`): its outputs are written, and the worker logs the
    run about a second later while DVC starts the next stage. The worker keeps the stage's stdout
    and stderr, so whoever reads them to the end (``dvc repro`` under a test, a pipe) also waits
    for the run to be logged; a terminal sees any warning of the worker a little after the stage.
    """
    stdin: IO[bytes] | None = worker.stdin
    try:
        if stdin is not None:
            if payload is not None:
                stdin.write(json.dumps(payload).encode())
            stdin.close()
    except BrokenPipeError:
        pass
    if wait:
        worker.wait()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store (``<db>.lock``) while one worker writes, so that
    workers of consecutive stages never create the schema or an experiment at the same time.
    Other stores (a tracking server) need none; a lock that cannot be taken is skipped."""
    handle = None
    if uri.startswith("sqlite:///"):
        try:
            import fcntl

            handle = open(uri.removeprefix("sqlite:///") + ".lock", "a")  # noqa: SIM115 - closed below
            fcntl.flock(handle, fcntl.LOCK_EX)
        except (OSError, ImportError):
            if handle is not None:
                handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


@contextlib.contextmanager
def stage_run(cfg: TrackingCfg, experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Recorder]:
    """Record the block's logging as one MLflow run in experiment ``<prefix>-<experiment>``."""
    global WORKER
    recorder = Recorder()
    start_ms = STARTED_MS or int(time.time() * 1000)
    status = "FAILED"
    try:
        yield recorder
        status = "FINISHED"
    finally:
        payload = None
        if tracking_enabled(cfg):
            payload = {
                "uri": cfg.uri, "experiment": f"{cfg.experiment_prefix}-{experiment}", "run_name": run_name,
                "tags": dict(tags or {}), "start_ms": start_ms, "end_ms": int(time.time() * 1000), "status": status,
                "params": recorder.params, "metrics": recorder.metrics, "artifacts": recorder.artifacts,
            }
        if WORKER is not None:
            worker, WORKER = WORKER, None
            finish_worker(worker, payload, wait=False)
        elif payload is not None:
            log_payload(payload)


def worker_main() -> int:
    """``python -m ipguard.tracking``: import MLflow, then log the one run read from stdin."""
    import mlflow  # noqa: F401 - the point: import while the stage works
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401

    data = sys.stdin.buffer.read()
    if data.strip():
        payload = json.loads(data)
        with _store_lock(str(payload.get("uri", ""))):
            log_payload(payload)
    return 0


def fast_exit(code: int) -> None:
    """End the process now, skipping the interpreter's teardown of MLflow's or torch's modules
    (0.5-0.8 s a process, once per pipeline stage). Only for a process whose outputs are all
    written and closed: stdio and logging are flushed here, nothing else is. Under a profiler or
    tracer (cProfile, coverage) the process exits normally, so that they can write their results."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    fast_exit(worker_main())
