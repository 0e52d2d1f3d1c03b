"""What every stage shares: where things live, the entry-point wrapper, model loading by name."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ipguard.config import Params, RuntimeCfg, load_params
from ipguard.data import SPLITS, Split
from ipguard.errors import ConfigError, IpguardError
from ipguard.io import load_tensors
from ipguard.models import PixelModel, load_model

PREPARED = Path("data/prepared")
ZOO = Path("models/zoo")
VARIANTS = Path("models/variants")
FINGERPRINTS = Path("fingerprints")
REPORTS = Path("reports")


def split_path(name: str) -> Path:
    return PREPARED / f"{name}.safetensors"


def zoo_path(name: str) -> Path:
    return ZOO / f"{name}.safetensors"


def variant_path(name: str) -> Path:
    return VARIANTS / f"{name}.safetensors"


def fingerprint_path(name: str) -> Path:
    return FINGERPRINTS / "raw" / f"{name}.safetensors"


def calibrated_path(name: str) -> Path:
    """The set with its calibration (written by ``evaluate``): what ``ipguard verify`` takes."""
    return FINGERPRINTS / "calibrated" / f"{name}.safetensors"


def reports_dir(params: Params) -> Path:
    return REPORTS / params.experiment.name


def load_split(name: str) -> Split:
    """A prepared split (``owner``, ``other`` or ``test``)."""
    if name not in SPLITS:
        raise IpguardError(f"data: unknown split '{name}' (known: {', '.join(SPLITS)})")
    tensors = load_tensors(split_path(name))
    x = tensors["x"]
    return Split(x.float().div(255) if x.dtype == torch.uint8 else x, tensors["y"])


POOLS = {"test": ("test",), "other": ("other",), "heldout": ("test", "other")}


def load_pool(name: str) -> Split:
    """Real images a fingerprint method may start from: ``test``, ``other`` or ``heldout`` (both).

    Which of them a given experiment may use is :func:`check_pool`'s question.
    """
    if name not in POOLS:
        raise IpguardError(f"fingerprint pool: unknown pool '{name}' (known: {', '.join(POOLS)})")
    parts = [load_split(part) for part in POOLS[name]]
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def training_splits(params: Params) -> dict[str, list[str]]:
    """Each prepared split that some model of the experiment trains on -> the config keys that train on it.

    The owner's split ``owner`` always (it is the owner's training data by name); ``model.data``
    and each ``zoo.models.<name>.data`` of a model trained here; ``postprocess.<key>.data`` of
    every variant that names its data (fine-tuning, distillation, extraction: a variant without
    the key trains on nothing, or on the owner's split). A model imported from a file or a
    package was trained elsewhere on data we cannot see: it is taken to have seen the whole
    training part of the dataset (``owner`` and ``other``); only ``test`` is held out of it.
    """
    used: dict[str, list[str]] = {}

    def add(split: str, key: str) -> None:
        used.setdefault(split, []).append(key)

    for name, spec, where in [(Params.OWNER, params.model, "model"),
                              *((n, m, f"zoo.models.{n}") for n, m in params.zoo.models.items())]:
        if spec.source == "train":
            add(spec.data, f"{where}.data")
        else:
            for split in ("owner", "other"):
                add(split, f"{where} (source: {spec.source}, trained on the dataset's training part)")
    for key, entry in params.postprocess.items():
        if "data" in entry:
            add(str(entry["data"]), f"postprocess.{key}.data")
    used.setdefault("owner", ["the owner (the split is named for its training data)"])
    return used


def check_pool(params: Params, pool: str, where: str) -> None:
    """Refuse a real-image pool that holds images any model of the experiment was trained on.

    Real starts, ``akh``, ``random_real`` and the attacks label real images by the owner; an image
    that the owner, a negative or a copy was trained on is one every model of that lineage tends
    to label alike for a reason that has nothing to do with the owner's boundary.
    """
    if pool not in POOLS:
        raise ConfigError(f"{where}: unknown pool '{pool}' (known: {', '.join(POOLS)})")
    used = training_splits(params)
    for split in POOLS[pool]:
        if split in used:
            raise ConfigError(
                f"{where}: pool '{pool}' holds the '{split}' split, which {used[split][0]} trains on; a real-image "
                "pool must hold no image the owner, a negative or a copy was trained on (use pool: test)"
            )


def check_pools(params: Params) -> None:
    """:func:`check_pool` for the pool of every fingerprint entry (``test`` where none is named)."""
    for key, entry in params.fingerprint.items():
        check_pool(params, str(entry.get("pool", "test")), f"fingerprint.{key}.pool")


def load_zoo_model(name: str, device: str = "cpu") -> tuple[PixelModel, dict]:
    return load_model(str(zoo_path(name)), device)


def suspect_paths(params: Params) -> list[tuple[str, Path]]:
    """(name, file) of every suspect: the owner, then the independents, then the variants."""
    out = [(Params.OWNER, zoo_path(Params.OWNER))]
    out += [(name, zoo_path(name)) for name in params.zoo.models]
    out += [(name, variant_path(name)) for name in params.postprocess]
    return out


def setup_runtime(cfg: RuntimeCfg) -> None:
    """Threads and determinism: same config and seed give the same bytes on CPU."""
    if cfg.device != "cpu":
        try:
            kind = torch.device(cfg.device).type
        except RuntimeError as exc:
            raise ConfigError(f"runtime.device: '{cfg.device}' is not a torch device ({exc})") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"runtime.device: '{cfg.device}' asked for, but torch sees no CUDA device here")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # CPU kernels are deterministic for a fixed thread count already; the switch matters on
    # CUDA only, and turning it on imports torch's compiler stack (~1.7 s per stage).
    if cfg.deterministic and cfg.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.backends.cudnn.benchmark = False
        # warn_only: a few backward kernels (adaptive pooling, for one) have no deterministic CUDA
        # version; they warn instead of stopping a long GPU run.
        torch.use_deterministic_algorithms(True, warn_only=True)


def run_stage(description: str, body: Callable[[Params, str | None], None], takes_key: bool = False) -> None:
    """Parse ``[KEY] [--params PATH]``, load params, run ``body``; bad input exits 2 with one line."""
    parser = argparse.ArgumentParser(description=description)
    if takes_key:
        parser.add_argument("key", help="which entry of the stage's foreach list to run")
    parser.add_argument("--params", default="params.yaml", help="the composed config (default: params.yaml)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = load_params(args.params)
        setup_runtime(params.runtime)
        body(params, getattr(args, "key", None))
    except IpguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
