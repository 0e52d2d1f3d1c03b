"""Files: model weights with their JSON sidecar, fingerprint sets, prepared data splits.

Every writer here writes to a temporary name in the target folder and renames it into place, so
that an interrupted or failed run leaves either the old file or the new one, never half of one.
Readers never unpickle: safetensors, JSON, and ``torch.load(weights_only=True)`` for foreign
state dicts (see :mod:`ipguard.foreign`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ipguard.errors import FingerprintFileError, IpguardError, ModelFileError

MODEL_FORMAT = "ipguard-model/1"
FINGERPRINT_FORMAT = "ipguard-fingerprint/1"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates owner-only files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, keys sorted, so that equal objects give equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sidecar_path(weights: str | os.PathLike[str]) -> Path:
    """The JSON sidecar that belongs to a model weights file."""
    return Path(weights).with_suffix(".json")


def save_model_file(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``path`` (safetensors) and its sidecar; returns the sidecar as written.

    ``meta`` holds what is needed to rebuild the model (architecture, its arguments, class count,
    input shape, normalisation, storage) and what describes it (lineage, params, accuracy).
    The sidecar records the weights' sha256 so that a reader can tell a mismatched pair.
    """
    path = Path(path)
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(path) as tmp_weights:
        save_file(contiguous, str(tmp_weights), metadata={"format": MODEL_FORMAT})
        sidecar = dict(meta, format=MODEL_FORMAT, sha256=sha256_file(tmp_weights))
        write_json(sidecar_path(path), sidecar)
    return sidecar


def read_json(path: str | os.PathLike[str], error: type[IpguardError], what: str) -> Any:
    """A JSON file's content; any failure to read or parse it is ``error`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not a readable JSON {what} ({exc})") from exc


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the sidecar of a project model file."""
    side = sidecar_path(path)
    if not side.is_file():
        raise ModelFileError(f"{side}: model sidecar not found (expected beside {path})")
    meta = read_json(side, ModelFileError, "sidecar")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{side}: not an ipguard model sidecar (format != {MODEL_FORMAT})")
    for key in ("arch", "num_classes", "input_shape", "normalization", "sha256"):
        if key not in meta:
            raise ModelFileError(f"{side}: sidecar lacks the key '{key}'")
    return meta


def read_safetensors(path: str | os.PathLike[str], error: type[IpguardError]) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning every failure into ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc})") from exc


def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a project model file: its tensors and its checked sidecar."""
    meta = read_sidecar(path)
    if not Path(path).is_file():
        raise ModelFileError(f"{path}: file not found")
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise ModelFileError(
            f"{path}: sha256 {actual[:12]}… does not match its sidecar ({meta['sha256'][:12]}…)"
        )
    return read_safetensors(path, ModelFileError), meta


def save_fingerprint_file(
    path: str | os.PathLike[str], inputs: torch.Tensor, labels: torch.Tensor, meta: Mapping[str, Any],
    outputs: torch.Tensor | None = None, decoys: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> str:
    """Write a fingerprint set; returns the file's sha256.

    ``outputs``: the owner's logits on the points, for sets scored on them (``score: sac``).
    ``decoys``: held-out images and the owner's labels of them, asked among the points by
    ``ipguard verify`` to catch a service that treats fingerprint queries apart.

    ``meta`` (method config, seed, owner sha256, dataset, calibration, ...) is stored as JSON in
    the safetensors header, so the file stands alone. The sha256 of the whole file is what
    reports and verdicts quote.
    """
    if inputs.shape[0] != labels.shape[0] or (outputs is not None and outputs.shape[0] != labels.shape[0]):
        raise ValueError("inputs, labels and outputs differ in length")
    tensors = {
        "inputs": inputs.detach().to(torch.float32).contiguous().cpu(),
        "labels": labels.detach().to(torch.int64).contiguous().cpu(),
    }
    if outputs is not None:
        tensors["outputs"] = outputs.detach().to(torch.float32).contiguous().cpu()
    if decoys is not None:
        if decoys[0].shape[0] != decoys[1].shape[0] or decoys[0].shape[1:] != inputs.shape[1:]:
            raise ValueError("decoy inputs and labels differ in length, or from the points in shape")
        tensors["decoy_inputs"] = decoys[0].detach().to(torch.float32).contiguous().cpu()
        tensors["decoy_labels"] = decoys[1].detach().to(torch.int64).contiguous().cpu()
    meta_json = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True)
    # One header key only: safetensors writes its metadata map in no fixed order, so several
    # keys would give different bytes for the same set from one run to the next.
    header = {
        FINGERPRINT_FORMAT: json.dumps(
            {"meta": meta_json,
             "content_sha256": _content_sha256(tensors["inputs"], tensors["labels"], meta_json, tensors.get("outputs"),
                                               _decoys_of(tensors))},
            sort_keys=True,
        )
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        digest = sha256_file(tmp)
    return digest


def _decoys_of(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    return (tensors["decoy_inputs"], tensors["decoy_labels"]) if "decoy_inputs" in tensors else None


def _content_sha256(inputs: torch.Tensor, labels: torch.Tensor, meta_json: str, outputs: torch.Tensor | None = None,
                    decoys: tuple[torch.Tensor, torch.Tensor] | None = None) -> str:
    """Hash of what a fingerprint set says (points, labels, metadata, the owner's outputs and the
    decoys if kept): catches edits to any of them. A set without outputs or decoys hashes as it
    did before they existed."""
    digest = hashlib.sha256()
    digest.update(str(tuple(inputs.shape)).encode())
    digest.update(inputs.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    digest.update(meta_json.encode())
    if outputs is not None:
        digest.update(str(tuple(outputs.shape)).encode())
        digest.update(outputs.contiguous().numpy().tobytes())
    if decoys is not None:
        digest.update(b"decoys" + str(tuple(decoys[0].shape)).encode())
        digest.update(decoys[0].contiguous().numpy().tobytes())
        digest.update(decoys[1].contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_fingerprint_file(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read and check a fingerprint set: inputs, labels and its metadata (with ``sha256`` added)."""
    inputs, labels, _, meta = load_fingerprint_set(path, expected_sha256)
    return inputs, labels, meta


def load_fingerprint_set(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """:func:`load_fingerprint_file` with the owner's outputs too (None for a set that keeps none)."""
    inputs, labels, outputs, _, meta = load_fingerprint_bundle(path, expected_sha256)
    return inputs, labels, outputs, meta


def load_fingerprint_bundle(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None, dict[str, Any]]:
    """:func:`load_fingerprint_set` with the decoys too (None for a set that keeps none)."""
    from safetensors import safe_open

    path = Path(path)
    tensors = read_safetensors(path, FingerprintFileError)
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise FingerprintFileError(f"{path}: sha256 {digest[:12]}… is not the expected {expected_sha256[:12]}…")
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(FINGERPRINT_FORMAT)
    if raw is None:
        raise FingerprintFileError(f"{path}: not an ipguard fingerprint file (no {FINGERPRINT_FORMAT} header)")
    try:
        header = json.loads(raw)
        meta = json.loads(header["meta"]) if isinstance(header, dict) else None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FingerprintFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise FingerprintFileError(f"{path}: metadata must be a JSON object")
    assert isinstance(header, dict)
    names = set(tensors) - {"decoy_inputs", "decoy_labels"}
    if names not in ({"inputs", "labels"}, {"inputs", "labels", "outputs"}) or \
            len({"decoy_inputs", "decoy_labels"} & set(tensors)) == 1:
        raise FingerprintFileError(f"{path}: expected tensors 'inputs', 'labels' (and 'outputs', 'decoy_inputs' with "
                                   f"'decoy_labels'), found {sorted(tensors)}")
    inputs, labels, outputs = tensors["inputs"], tensors["labels"], tensors.get("outputs")
    if inputs.dtype != torch.float32 or labels.dtype != torch.int64:
        raise FingerprintFileError(f"{path}: inputs must be float32 and labels int64")
    if inputs.ndim != 4 or labels.ndim != 1 or inputs.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise FingerprintFileError(
            f"{path}: inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} do not form a fingerprint set"
        )
    if outputs is not None and (outputs.dtype != torch.float32 or outputs.ndim != 2 or outputs.shape[0] != labels.shape[0]
                                or not bool(torch.isfinite(outputs).all())):
        raise FingerprintFileError(f"{path}: outputs {tuple(outputs.shape)} are not finite float32 logits, one row per point")
    if meta.get("score", "match") == "sac" and outputs is None:
        raise FingerprintFileError(f"{path}: a set scored by 'sac' must keep the owner's outputs, and this one has none")
    decoys = _decoys_of(tensors)
    if decoys is not None and (decoys[0].dtype != torch.float32 or decoys[1].dtype != torch.int64
                               or decoys[0].shape[1:] != inputs.shape[1:] or decoys[0].shape[0] != decoys[1].shape[0]):
        raise FingerprintFileError(f"{path}: decoys {tuple(decoys[0].shape)} / {tuple(decoys[1].shape)} do not fit the points")
    if header.get("content_sha256") != _content_sha256(inputs, labels, header.get("meta", "{}"), outputs, decoys):
        raise FingerprintFileError(f"{path}: content does not match its recorded sha256 (the set was altered)")
    meta["sha256"] = digest
    return inputs, labels, outputs, decoys, meta


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write plain tensors (prepared data) atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read plain tensors written by :func:`save_tensors`."""
    return read_safetensors(path, IpguardError)


# int8 storage (the weights of the quantize_int8 post-processing): per-output-channel symmetric
# scales, stored beside each weight as `<key>.int8_scale`.
def _int8_scale(w: torch.Tensor) -> torch.Tensor:
    amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    return (amax / 127.0).to(torch.float32)


def pack_int8(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-output-channel symmetric int8 for every weight with 2+ dimensions; other tensors as they are."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("weight") and t.ndim >= 2 and t.is_floating_point():
            scale = _int8_scale(t)
            shape = (-1,) + (1,) * (t.ndim - 1)
            out[key] = torch.round(t.float() / scale.view(shape)).clamp_(-127, 127).to(torch.int8)
            out[key + ".int8_scale"] = scale
        else:
            out[key] = t
    return out


def unpack_int8(packed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_int8`: dequantized float32 weights."""
    out: dict[str, torch.Tensor] = {}
    for key, t in packed.items():
        if key.endswith(".int8_scale"):
            continue
        if t.dtype == torch.int8:
            scale = packed[key + ".int8_scale"]
            out[key] = t.float() * scale.view((-1,) + (1,) * (t.ndim - 1))
        else:
            out[key] = t
    return out
