"""Training throughput per architecture, and the run time of an experiment estimated from it.

    python benchmarks/train_throughput.py --device cuda --out benchmarks/results/train_throughput_h200.json
    python benchmarks/train_throughput.py --estimate benchmarks/results/train_throughput_h200.json \
        --experiment cifar10_paper
    python benchmarks/train_throughput.py --recipe conf/training/fast.yaml --model conf/model/cifar_airbench.yaml \
        --autocast none,bf16 --images 10240 --out benchmarks/results/train_throughput_cpu_autocast.json

The first form times the project's own training loop (``ipguard.training.train``: SGD, batch
128, 32×32 images) for each architecture of the paper experiments on random data, after a warm-up
epoch, and prints images per second. The second sums, over every model an experiment trains (the
owner, the zoo, the post-processed copies that train), epochs × images ÷ that architecture's
throughput: a lower bound on the wall time (no data loading, matching or fingerprinting).
The third times a recipe of ``conf/training/`` (batch size, augmentation, NHWC, lookahead) under
each autocast mode: on a CPU without bf16 units (AVX-512 BF16, AMX) PyTorch emulates bf16, and a
recipe's ``autocast: bf16`` can cost more than it saves. The CPU's flags are recorded beside.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from ipguard.config import TrainingCfg

ARCHS = ["cifar_resnet20", "cifar_resnet56", "timm/resnet18", "timm/mobilenetv2_100", "timm/densenet121", "timm/efficientnet_b0"]
CIFAR_TRAIN = 50_000


def throughput(arch: str, device: str, num_classes: int, images: int, batch_size: int,
               recipe: TrainingCfg | None = None, kwargs: dict | None = None) -> float:
    """Images per second of ``train`` for ``arch`` (second of two epochs over ``images`` images),
    with plain SGD at ``batch_size`` or, given, one epoch of ``recipe``."""
    from ipguard.config import TrainingCfg
    from ipguard.models import PixelModel, create_model
    from ipguard.training import train

    torch.manual_seed(0)
    net = create_model(arch, num_classes, (3, 32, 32), **(kwargs or {}))
    model = PixelModel(net, [0.5] * 3, [0.25] * 3).to(device)
    x = torch.rand(images, 3, 32, 32)
    y = torch.randint(num_classes, (images,))
    cfg = (dataclasses.replace(recipe, epochs=1) if recipe is not None
           else TrainingCfg(epochs=1, batch_size=batch_size, lr=0.01, optimizer="sgd", weight_decay=5e-4))
    train(model, x, y, cfg, seed=0)  # warm-up: kernels, allocator, cuDNN's choices
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, x, y, cfg, seed=1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def estimate(measured: dict, experiment: str) -> dict:
    """Training-only seconds of ``experiment`` from measured images/s (see the module's docstring)."""
    from omegaconf import OmegaConf

    from ipguard.config import compose, params_from_dict

    params = params_from_dict(OmegaConf.to_container(compose([f"experiment={experiment}"]), resolve=True))
    rate = measured["images_per_second"]
    half = CIFAR_TRAIN * (1 - params.dataset.other_fraction), CIFAR_TRAIN * params.dataset.other_fraction
    split = {"owner": half[0], "other": half[1]}
    rows = []
    for name in ("owner", *params.zoo.models):
        spec, cfg = params.model_spec(name), params.training_for(name)
        if spec.source == "train":
            rows.append((name, spec.arch, cfg.epochs * split[spec.data] / rate[spec.arch]))
    for key, entry in params.postprocess.items():
        # A student's epochs: its own, else those of the recipe it takes (`training: ${training}`).
        epochs = entry.get("epochs") or (entry.get("training") or {}).get("epochs")
        if epochs:
            arch = entry.get("student_arch") or params.model.arch
            data = split[entry.get("data", "owner")]
            rows.append((key, arch, epochs * data / rate.get(arch, rate[params.model.arch])))
    total = sum(s for _, _, s in rows)
    by_arch: dict[str, float] = {}
    for _, arch, s in rows:
        by_arch[arch] = by_arch.get(arch, 0.0) + s
    return {"experiment": experiment, "device": measured["device"], "models_trained": len(rows),
            "training_hours": total / 3600, "hours_by_arch": {a: s / 3600 for a, s in sorted(by_arch.items())}}


def load_recipe(path: Path) -> TrainingCfg:
    """A ``conf/training/`` file as the training settings it composes to."""
    from omegaconf import OmegaConf

    from ipguard.config import merge_into

    return merge_into(TrainingCfg(), OmegaConf.to_container(OmegaConf.load(path)), str(path))


def cpu_flags() -> dict[str, bool]:
    """Whether this CPU has the units bf16 autocast runs on (Linux's /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    words = set(info.read_text().split()) if info.exists() else set()
    return {flag: flag in words for flag in ("avx512f", "avx512_bf16", "amx_bf16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--images", type=int, default=0, help="images per timed epoch (default: 20,480 on CUDA, 512 on CPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--model", help="a model config (conf/model/*.yaml): its arch and kwargs, instead of --archs")
    ap.add_argument("--recipe", help="a training config (conf/training/*.yaml) instead of plain SGD")
    ap.add_argument("--autocast", default="", help="comma-separated autocast modes to time the recipe under (none,bf16)")
    ap.add_argument("--estimate", help="a JSON written by the first form: estimate --experiment's training time from it")
    ap.add_argument("--experiment", action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.estimate:
        measured = json.loads(Path(args.estimate).read_text())
        result: dict = {"estimates": [estimate(measured, exp) for exp in args.experiment or ["cifar10_paper"]]}
    else:
        images = args.images or (20_480 if args.device.startswith("cuda") else 512)
        recipe = load_recipe(Path(args.recipe)) if args.recipe else None
        modes = [m for m in args.autocast.split(",") if m] if recipe is not None else []
        rates = {}
        kwargs: dict = {}
        archs = args.archs.split(",")
        if args.model:
            from omegaconf import OmegaConf

            spec = OmegaConf.to_container(OmegaConf.load(args.model))
            archs, kwargs = [spec["arch"]], dict(spec.get("kwargs") or {})
        for arch in archs:
            for mode in modes or [None]:
                key = arch if mode is None else f"{arch}/{mode}"
                cfg = dataclasses.replace(recipe, autocast=mode) if recipe is not None and mode else recipe
                rates[key] = throughput(arch, args.device, args.num_classes, images, args.batch_size, cfg, kwargs)
                print(f"{key}: {rates[key]:.0f} images/s", flush=True)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
        result = {"device": name, "torch": torch.__version__, "images": images, "images_per_second": rates}
        if recipe is not None:
            result.update(recipe=args.recipe, model=args.model, kwargs=kwargs, batch_size=recipe.batch_size, cpu_flags=cpu_flags())
        else:
            result["batch_size"] = args.batch_size
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
