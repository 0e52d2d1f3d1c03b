"""The `ipguard` command: fingerprint, calibrate and verify, and its refusals of bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ipguard.cli import main
from ipguard.io import load_fingerprint_file

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "cifar10-resnet"
CIFAR_NORM = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("ipguard")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ipguard.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, IPGUARD_PROGRESS="0"))


@pytest.fixture(scope="module")
def calibrated(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny owner fingerprinted through the CLI and calibrated on two independent models."""
    out = tmp_path_factory.mktemp("cli") / "fp.safetensors"
    zoo = workspace / "models/zoo"
    assert main(["fingerprint", "--model", str(zoo / "owner.safetensors"), "--n", "40", "--k", "1", "--out", str(out)]) == 0
    assert main(["calibrate", "--fingerprints", str(out), "--negatives",
                 str(zoo / "cnn_s1_owner.safetensors"), str(zoo / "lenet_s2_owner.safetensors")]) == 0
    return out


def test_verify_json_says_pirated_for_a_copy(calibrated: Path, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["verify", "--fingerprints", str(calibrated), "--model", str(workspace / "models/variants/ftll.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("matching_rate", "matches", "n", "p_value", "verdict", "fingerprint_sha256", "model_sha256"):
        assert key in result
    assert result["n"] == 40 and result["verdict"] == "pirated" and result["p_value"] < 0.01


def test_verify_exits_0_for_an_independent_model(calibrated: Path, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["verify", "--fingerprints", str(calibrated), "--model", str(workspace / "models/zoo/mlp_s5_other.safetensors"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["verdict"] in {"pirated", "independent"}
    assert result["matching_rate"] < 1.0


def test_help_lists_every_verb() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for verb in ("fingerprint", "calibrate", "verify"):
        assert verb in proc.stdout


def _expect_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_and_corrupt_files_are_refused(calibrated: Path, workspace: Path, tmp_path: Path) -> None:
    owner = str(workspace / "models/zoo/owner.safetensors")
    _expect_refusal(_run("verify", "--fingerprints", str(tmp_path / "none.safetensors"), "--model", owner), "none.safetensors", "not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    _expect_refusal(_run("verify", "--fingerprints", str(calibrated), "--model", str(bad), "--arch", "cnn"), "bad.pt")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    _expect_refusal(_run("verify", "--fingerprints", str(broken), "--model", owner), "broken.safetensors")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_pickle_that_would_run_code_is_refused_and_not_run(calibrated: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"state_dict": {"w": _Evil()}}, handle)
    proc = _run("verify", "--fingerprints", str(calibrated), "--model", str(evil), "--arch", "cnn", cwd=tmp_path)
    _expect_refusal(proc, "evil.pt", "refused")
    assert not (tmp_path / "PWNED").exists()


def test_models_that_do_not_fit_the_fingerprints_are_refused(calibrated: Path, workspace: Path, tmp_path: Path) -> None:
    # A state dict of the right architecture but 7 classes.
    torch.manual_seed(0)
    from ipguard.models import create_model

    seven = tmp_path / "seven.pt"
    torch.save(create_model("cnn", 7, (1, 8, 8)).state_dict(), seven)
    _expect_refusal(_run("verify", "--fingerprints", str(calibrated), "--model", str(seven), "--arch", "cnn"), "seven.pt")
    # A project model whose input shape differs from the fingerprints'.
    wide = tmp_path / "wide.safetensors"
    shutil.copy(workspace / "models/zoo/owner.safetensors", wide)
    meta = json.loads((workspace / "models/zoo/owner.json").read_text())
    meta["input_shape"] = [1, 16, 16]
    wide.with_suffix(".json").write_text(json.dumps(meta))
    _expect_refusal(_run("verify", "--fingerprints", str(calibrated), "--model", str(wide)), "wide.safetensors", "[1, 16, 16]")
    # An unknown architecture name.
    _expect_refusal(_run("verify", "--fingerprints", str(calibrated), "--model", str(seven), "--arch", "resnet9000"), "resnet9000")


def test_altered_fingerprints_are_refused(calibrated: Path, workspace: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    owner = str(workspace / "models/zoo/owner.safetensors")
    tensors = load_file(str(calibrated))
    with safe_open(str(calibrated), framework="pt") as handle:
        header = handle.metadata()
    tensors["labels"] = (tensors["labels"] + 1) % 10  # relabelled, header kept
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), metadata=header)
    _expect_refusal(_run("verify", "--fingerprints", str(forged), "--model", owner), "forged.safetensors", "altered")
    wrong_shape = tmp_path / "shape.safetensors"
    save_file({"inputs": torch.rand(3, 64), "labels": torch.zeros(3, dtype=torch.int64)}, str(wrong_shape), metadata=header)
    _expect_refusal(_run("verify", "--fingerprints", str(wrong_shape), "--model", owner), "shape.safetensors")
    other = _run("verify", "--fingerprints", str(calibrated), "--model", owner, "--expect-sha256", "0" * 64)
    _expect_refusal(other, "sha256")


def test_uncalibrated_set_is_refused(workspace: Path) -> None:
    owner = str(workspace / "models/zoo/owner.safetensors")
    _expect_refusal(_run("verify", "--fingerprints", str(workspace / "fingerprints/raw/ipguard.safetensors"), "--model", owner),
                    "not calibrated")


def test_pipeline_writes_calibrated_sets_for_verify(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workspace / "fingerprints/calibrated/ipguard.safetensors"
    _, _, meta = load_fingerprint_file(path)
    assert meta["calibration"]["negatives"] == 3
    capsys.readouterr()
    assert main(["verify", "--fingerprints", str(path), "--model", str(workspace / "models/variants/int8.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "pirated"


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="needs ../shared/weights/cifar10-resnet (the offline CIFAR ResNets)")
def test_shared_cifar_resnets(tmp_path: Path) -> None:
    """Fingerprint ResNet-20, calibrate on ResNet-32/44: ResNet-20 pirated, ResNet-56 independent."""
    w = {d: str(next(SHARED_WEIGHTS.glob(f"resnet{d}-*.th"))) for d in (20, 32, 44, 56)}
    fp = tmp_path / "r20.safetensors"
    proc = _run("fingerprint", "--model", w[20], "--arch", "cifar_resnet20", *CIFAR_NORM, "--num-classes", "10",
                "--input-shape", "3,32,32", "--k", "10", "--out", str(fp))
    assert proc.returncode == 0, proc.stderr
    proc = _run("calibrate", "--fingerprints", str(fp), "--negatives", w[32], w[44], "--arch", "cifar_resnet32", "cifar_resnet44", *CIFAR_NORM)
    assert proc.returncode == 0, proc.stderr
    verdicts = {}
    for d in (20, 56):
        proc = _run("verify", "--fingerprints", str(fp), "--model", w[d], "--arch", f"cifar_resnet{d}", *CIFAR_NORM, "--json")
        assert proc.returncode == 0, proc.stderr
        verdicts[d] = json.loads(proc.stdout)
    assert verdicts[20]["verdict"] == "pirated" and verdicts[20]["p_value"] < 1e-6 and verdicts[20]["matching_rate"] == 1.0
    assert verdicts[56]["verdict"] == "independent"
