"""Stage ``prepare``: the dataset's seeded owner / other / test splits. Reads ``dataset``."""

from __future__ import annotations

import torch

from ipguard.config import Params, to_dict
from ipguard.data import load_dataset, split
from ipguard.io import save_tensors
from ipguard.stages.common import run_stage, split_path
from ipguard.tracking import stage_run


def prepare(params: Params, key: str | None = None) -> None:
    cfg = params.dataset
    parts = split(load_dataset(cfg.name, cfg.root), cfg.test_fraction, cfg.other_fraction, cfg.seed)
    for name, part in parts.items():
        # 8-bit images are stored as bytes (a quarter of float32); loading divides by 255 again.
        x = torch.round(part.x * 255).to(torch.uint8) if cfg.storage == "uint8" else part.x
        save_tensors(split_path(name), {"x": x, "y": part.y})
    with stage_run(params.tracking, params.experiment.name, "prepare", {"stage": "prepare"}) as run:
        run.log_params({"dataset": to_dict(cfg)})
        run.log_metrics({f"size.{name}": len(part) for name, part in parts.items()})


def main() -> None:
    run_stage(__doc__ or "", prepare)


if __name__ == "__main__":
    main()
