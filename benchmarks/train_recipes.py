"""Accuracy and minutes per model for a training recipe and an architecture, on real CIFAR-10.

    python benchmarks/train_recipes.py --data ../shared/data/cifar10-jpeg \
        --run airbench:fast --out benchmarks/results/train_recipes_cpu.json

Each ``--run ARCH[KWARGS]:RECIPE[:KEY=VALUE,...]`` trains one model from scratch with the
project's loop (``ipguard.training.train``) on the full training set (``--train-size`` cuts it),
the recipe being ``conf/training/RECIPE.yaml`` with the overrides after it, and reports the wall
time, images per second and the accuracy on the test set. ``ARCH`` may carry its kwargs as JSON:
``'airbench{"widths": [32, 64, 128]}'``. The figures are those of this machine while the
benchmark runs; run it with nothing else on the cores. Results are appended to ``--out`` (one
record per run, with the host's CPU count and torch's thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def parse_run(spec: str) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """``ARCH[KWARGS]:RECIPE[:K=V,...]`` as (arch, arch kwargs, recipe, training overrides)."""
    import yaml

    if "{" in spec:
        open_at, close_at = spec.index("{"), spec.rindex("}")
        arch, kwargs, rest = spec[:open_at], json.loads(spec[open_at : close_at + 1]), spec[close_at + 1 :].lstrip(":")
    else:
        arch, _, rest = spec.partition(":")
        kwargs = {}
    recipe, _, raw = rest.partition(":")
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in raw.split(",") if item)}
    return arch, kwargs, recipe or "fast", overrides


def run_one(spec: str, data: dict[str, tuple[torch.Tensor, torch.Tensor]], train_size: int, device: str, seed: int) -> dict[str, Any]:
    from ipguard.config import TrainingCfg, merge_into
    from ipguard.models import PixelModel, accuracy, create_model, init_from_data
    from ipguard.training import train

    arch, kwargs, recipe, overrides = parse_run(spec)
    base = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "training" / f"{recipe}.yaml"))
    cfg = merge_into(TrainingCfg(), {**base, **overrides}, f"training ({recipe})")
    x, y = data["train"]
    if 0 < train_size < x.shape[0]:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:train_size]
        x, y = x[keep], y[keep]
    torch.manual_seed(seed)
    model = PixelModel(create_model(arch, 10, (3, 32, 32), **kwargs), MEAN, STD).to(device)
    start = time.perf_counter()
    init_from_data(model, x)
    history = train(model, x, y, cfg, seed=seed, desc=f"{arch}:{recipe}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    xt, yt = data["test"]
    t0 = time.perf_counter()
    acc = accuracy(model, xt, yt)
    eval_seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {
        "run": spec, "arch": arch, "arch_kwargs": kwargs, "recipe": recipe, "overrides": overrides,
        "training": OmegaConf.to_container(OmegaConf.structured(cfg)), "parameters": params,
        "train_images": int(x.shape[0]), "epochs": cfg.epochs, "train_seconds": round(seconds, 1),
        "train_minutes": round(seconds / 60, 2), "images_per_second": round(cfg.epochs * x.shape[0] / seconds, 1),
        "test_accuracy": round(acc, 4), "test_images": int(xt.shape[0]), "eval_seconds": round(eval_seconds, 1),
        "final_train_loss": round(history[-1], 4) if history else None, "device": device, "seed": seed,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| run | params | precision | train images | epochs | minutes | images/s | test accuracy |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in records:
        precision = "bf16 autocast" if r["training"].get("autocast") == "bf16" else "float32"
        lines.append(f"| `{r['run']}` | {r['parameters']:,} | {precision} | {r['train_images']:,} | {r['epochs']} | "
                     f"{r['train_minutes']:.1f} | {r['images_per_second']:.0f} | {100 * r['test_accuracy']:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an ImageFolder tree with train/ and test/ (the JPEG CIFAR-10 copy)")
    ap.add_argument("--run", action="append", default=[], help="ARCH[KWARGS]:RECIPE[:KEY=VALUE,...] (repeatable)")
    ap.add_argument("--train-size", type=int, default=0, help="train on this many images (0: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="append the records to this JSON list")
    ap.add_argument("--markdown", type=Path, help="print the table of the records in this JSON file and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if not args.data or not args.run:
        ap.error("--data and at least one --run are needed")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ipguard.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset("cifar10", args.data)
    print(f"data loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    records = json.loads(args.out.read_text()) if args.out and args.out.exists() else []
    for spec in args.run:
        record = run_one(spec, data, args.train_size, args.device, args.seed)
        print(json.dumps(record), flush=True)
        records.append(record)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(markdown(records))


if __name__ == "__main__":
    main()
