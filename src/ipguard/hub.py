"""A model hub's check split over Hydra jobs: one shard of a manifest's suspects per job.

    python -m ipguard.hub -m fingerprints=FP.calibrated.safetensors manifest=hub/manifest.json \
        shards=4 'shard=range(4)' hydra/launcher=joblib          # or hydra/launcher=slurm

Each job runs ``ipguard verify --models-manifest MANIFEST --shard I/K --out OUT_DIR/shard-I.jsonl``
(joblib's workers and SLURM's tasks are processes of their own, so the shards run in parallel)
and returns the number of suspects it could not check. The shards' lines together are the verdict of every suspect, each
once; a suspect that could not be checked has an ``error`` line, and the job fails (exit 2) after
writing its file, as ``ipguard verify`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig


def verify_argv(cfg: DictConfig) -> list[str]:
    """The ``ipguard verify`` arguments of the job ``cfg``."""
    argv = ["verify", "--fingerprints", str(cfg.fingerprints), "--models-manifest", str(cfg.manifest),
            "--shard", f"{int(cfg.shard)}/{int(cfg.shards)}", "--json",
            "--out", str(Path(cfg.out_dir) / f"shard-{int(cfg.shard)}.jsonl")]
    if cfg.level is not None:
        argv += ["--level", str(cfg.level)]
    return argv


@hydra.main(version_base="1.3", config_path="../../conf", config_name="hub")
def main(cfg: DictConfig) -> int:
    """One shard of the hub's check; returns how many of its suspects could not be checked."""
    import contextlib
    import io
    import sys

    import torch

    from ipguard.cli import main as cli_main

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(verify_argv(cfg))
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    errors = sum(1 for item in lines if item.get("error"))
    print(f"shard {int(cfg.shard)}/{int(cfg.shards)}: {len(lines)} suspects, {errors} not checked -> "
          f"{Path(cfg.out_dir) / f'shard-{int(cfg.shard)}.jsonl'}")
    if code != 0 and not lines:
        sys.exit(code)  # the whole job failed (a bad set or manifest); the one-line reason is on stderr
    return errors


if __name__ == "__main__":
    main()
