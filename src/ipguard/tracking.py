"""MLflow mirror of the pipeline's runs (params, metrics, tables and figures).

DVC's outputs are the record; MLflow is for browsing. Tracking is therefore best effort: if the
store cannot be reached or written, the stage warns once and carries on, and its DVC outputs are
written as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ipguard.config import TrackingCfg

log = logging.getLogger(__name__)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, lists kept as text."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = obj
    return out


class Tracker:
    """A handle on one MLflow run; every call is a no-op once tracking has failed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.run_id: str | None = None

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a stage
            self.enabled = False
            print(f"ipguard: warning: MLflow tracking failed while {what} ({type(exc).__name__}: {exc}); "
                  "the stage's DVC outputs are written regardless", file=sys.stderr)
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        import mlflow

        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        self._guard("logging params", mlflow.log_params, flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        import mlflow

        clean = {k.replace("@", "_at_"): float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        self._guard("logging metrics", mlflow.log_metrics, clean, step=step)

    def log_history(self, key: str, values: list[float]) -> None:
        """One metric's values per step (epoch), in a single call to the store."""
        if not self.enabled or not values or self.run_id is None:
            return
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(v), now, step) for step, v in enumerate(values)]
        self._guard(f"logging {key}", MlflowClient().log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        import mlflow

        if Path(path).exists():
            fn = mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact
            self._guard(f"logging {path}", fn, str(path), artifact_path)


@contextlib.contextmanager
def stage_run(
    cfg: TrackingCfg, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
) -> Iterator[Tracker]:
    """An MLflow run in experiment ``<prefix>-<experiment>`` for the block's duration.

    ``IPGUARD_TRACKING=0`` or ``tracking.enabled: false`` turns it off. A failure to start the
    run, or at any later call, is reported once on stderr and never raised.
    """
    enabled = cfg.enabled and os.environ.get("IPGUARD_TRACKING", "1") not in {"0", "false", "no"}
    tracker = Tracker(enabled)
    if not enabled:
        yield tracker
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    def start() -> Any:
        mlflow.set_tracking_uri(cfg.uri)
        mlflow.set_experiment(f"{cfg.experiment_prefix}-{experiment}")
        return mlflow.start_run(run_name=run_name, tags=dict(tags or {}))

    run = tracker._guard("starting a run", start)
    if run is None:
        tracker.enabled = False
        yield tracker
        return
    tracker.run_id = run.info.run_id
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker._guard("ending the run", mlflow.end_run, status=status)
