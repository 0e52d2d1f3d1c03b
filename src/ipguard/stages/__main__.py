"""The stage launcher: ``python -m ipguard.stages STAGE [ARGS ...]``, as dvc.yaml runs stages.

It starts the MLflow tracking worker first (see :mod:`ipguard.tracking`), so that the worker's
MLflow import runs on the second core while this process imports torch and does the stage's
work; then it runs ``ipguard.stages.STAGE`` as ``python -m ipguard.stages.STAGE`` would.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

STAGES = ("prepare", "train", "postprocess", "fingerprint", "match", "evaluate", "effects")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m ipguard.stages {{{','.join(STAGES)}}} [ARGS ...]", file=sys.stderr)
        raise SystemExit(2)
    stage = sys.argv[1]
    from ipguard import tracking

    tracking.STARTED_MS = int(time.time() * 1000)
    if os.environ.get("IPGUARD_TRACKING", "1") not in {"0", "false", "no"}:
        tracking.WORKER = tracking.start_worker()
    sys.argv = [f"ipguard.stages.{stage}", *sys.argv[2:]]
    try:
        importlib.import_module(f"ipguard.stages.{stage}").main()
    finally:
        # A stage that stopped before logging (bad input) sends nothing; the worker just ends.
        if tracking.WORKER is not None:
            tracking.finish_worker(tracking.WORKER, None)


if __name__ == "__main__":
    main()
    # Reached only when the stage succeeded (an error leaves through SystemExit with its status).
    from ipguard.tracking import fast_exit

    fast_exit(0)
