"""Files: round trips, determinism, and clear errors for bad files (nothing half written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ipguard.errors import FingerprintFileError, ModelFileError
from ipguard.io import load_fingerprint_file, load_fingerprint_set, save_fingerprint_file, save_model_file, sha256_file
from ipguard.models import PixelModel, create_model, load_model, model_meta, model_tensors


def _copy_model(src: Path, dst_dir: Path, name: str = "m") -> Path:
    dst = dst_dir / f"{name}.safetensors"
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_corrupt_weights_are_refused(workspace: Path, tmp_path: Path) -> None:
    path = _copy_model(workspace / "models/zoo/owner.safetensors", tmp_path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match=str(path)):
        load_model(str(path))


def test_truncated_weights_with_fixed_hash_are_refused(workspace: Path, tmp_path: Path) -> None:
    path = _copy_model(workspace / "models/zoo/owner.safetensors", tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = sha256_file(path)  # the hash now fits; the content does not parse
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(str(path))


def test_sidecar_problems_are_named(workspace: Path, tmp_path: Path) -> None:
    path = _copy_model(workspace / "models/zoo/owner.safetensors", tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "num_classes": 7}))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(str(path))
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable JSON sidecar"):
        load_model(str(path))
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match="sidecar not found"):
        load_model(str(path))


def test_weights_from_another_model_are_refused(workspace: Path, tmp_path: Path) -> None:
    path = _copy_model(workspace / "models/zoo/owner.safetensors", tmp_path)
    shutil.copy(workspace / "models/zoo/mlp_s5_other.safetensors", path)
    with pytest.raises(ModelFileError, match="does not match its sidecar"):
        load_model(str(path))


def test_corrupt_model_stops_a_stage_with_exit_2(workspace: Path, tmp_path: Path) -> None:
    """A corrupt suspect stops `match` with one line naming it, and the old output stays."""
    run = tmp_path / "run"
    shutil.copytree(workspace, run)
    report = run / "reports/tiny/matching_rates.csv"
    before = report.read_bytes()
    (run / "models/variants/ftll.safetensors").write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "ipguard.stages.match"], cwd=run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "models/variants/ftll.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert report.read_bytes() == before
    assert not list(report.parent.glob(".*.tmp")), "no temporary file may be left behind"


def test_fingerprint_round_trip_and_tampering(tmp_path: Path) -> None:
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    path = tmp_path / "fp.safetensors"
    digest = save_fingerprint_file(path, x, y, {"method": "ipguard", "seed": 1})
    inputs, labels, meta = load_fingerprint_file(path, expected_sha256=digest)
    assert torch.equal(inputs, x) and torch.equal(labels, y) and meta["seed"] == 1 and meta["sha256"] == digest
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(FingerprintFileError, match="sha256"):
        load_fingerprint_file(path, expected_sha256=digest)
    with pytest.raises(FingerprintFileError, match="file not found"):
        load_fingerprint_file(tmp_path / "missing.safetensors")


def test_owner_outputs_travel_with_a_sac_set_and_are_checked(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    x, y, out = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,)), torch.randn(6, 10)
    path = tmp_path / "sac.safetensors"
    save_fingerprint_file(path, x, y, {"method": "sac", "score": "sac"}, outputs=out)
    inputs, labels, outputs, meta = load_fingerprint_set(path)
    assert torch.equal(outputs, out) and meta["score"] == "sac"
    assert load_fingerprint_file(path)[2]["score"] == "sac"  # the three-part reader still reads it
    plain = tmp_path / "plain.safetensors"
    save_fingerprint_file(plain, x, y, {"method": "ipguard"})
    assert load_fingerprint_set(plain)[2] is None
    # A sac set without the owner's outputs cannot be scored: refused, not silently matched.
    bare = tmp_path / "bare.safetensors"
    save_fingerprint_file(bare, x, y, {"method": "sac", "score": "sac"})
    with pytest.raises(FingerprintFileError, match="owner's outputs"):
        load_fingerprint_set(bare)
    # Outputs edited after the fact (the header kept): the content hash catches it.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(str(path))
    tensors["outputs"] = tensors["outputs"] + 1.0
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(FingerprintFileError, match="altered"):
        load_fingerprint_set(path)
    with pytest.raises(ValueError, match="differ in length"):
        save_fingerprint_file(path, x, y, {}, outputs=out[:3])


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    model = PixelModel(create_model("mlp", 10, (1, 8, 8)), [0.3], [0.4])
    meta = model_meta(model, "mlp", {}, 10, (1, 8, 8))
    meta["unserialisable"] = object()
    with pytest.raises(TypeError):
        save_model_file(tmp_path / "m.safetensors", model_tensors(model), meta)
    assert list(tmp_path.iterdir()) == []


def test_training_is_deterministic(tiny_params_file: Path) -> None:
    """Same config and seed: the same bytes, in two separate processes."""
    cfg = yaml.safe_load(tiny_params_file.read_text())
    cfg["tracking"]["enabled"] = False
    tiny_params_file.write_text(yaml.safe_dump(cfg))
    root = tiny_params_file.parent
    digests = []
    for _ in range(2):
        for stage in (["prepare"], ["train", "owner"]):
            subprocess.run([sys.executable, "-m", f"ipguard.stages.{stage[0]}", *stage[1:]], cwd=root, check=True, timeout=120)
        digests.append((sha256_file(root / "data/prepared/owner.safetensors"), sha256_file(root / "models/zoo/owner.safetensors"),
                        (root / "models/zoo/owner.json").read_bytes()))
        shutil.rmtree(root / "models")
    assert digests[0] == digests[1]


def test_fingerprint_files_are_byte_identical_across_processes(tmp_path: Path) -> None:
    """Same set, same bytes: the header must not depend on a process's hash seed."""
    code = (
        "import sys, torch; from ipguard.io import save_fingerprint_file;"
        "g = torch.Generator().manual_seed(0);"
        "save_fingerprint_file(sys.argv[1], torch.rand(4, 1, 8, 8, generator=g), torch.arange(4),"
        " {'method': 'ipguard', 'seed': 0, 'config': {'k': 1.0, 'n': 4}, 'owner_sha256': 'x'})"
    )
    digests = set()
    for i in range(4):
        out = tmp_path / f"fp{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
        digests.add(sha256_file(out))
    assert len(digests) == 1


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from ipguard.io import write_text

    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
