"""The `ipguard` command: fingerprint, calibrate and verify, and its refusals of bad input.

Most tests use a small digits zoo of their own (built in seconds): a trained owner, a copy of it
(its weights perturbed), and 13 untrained networks of three architectures as independent
models, enough negatives for the calibration to support the level 0.01. Refusals must be one
line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SHARED
from ipguard.cli import main
from ipguard.io import load_fingerprint_file, save_fingerprint_file, sha256_file

SHARED_WEIGHTS = SHARED / "weights" / "cifar10-resnet"
PUBLIC = SHARED / "weights" / "cifar10-public"
CIFAR_NORM = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
N_NEG = 13  # neg00..neg12; neg12 is kept out of the calibration as an independent suspect
MANIFEST_ARCHS = """from ipguard.models import create_model


def build(arch, num_classes=10):
    return create_model(arch, num_classes, (1, 8, 8))
"""


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("ipguard")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ipguard.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, IPGUARD_PROGRESS="0"))


def _expect_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run ``main`` in-process: exit 2, one line on stderr naming every needle."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"ipguard {argv[0]}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """owner/copy/negNN.safetensors (project files), negNN.ckpt (foreign {'net', 'acc'} state
    dicts), and public/ (a manifest of neg00..neg03 as foreign files, with its archs.py)."""
    from sklearn.datasets import load_digits

    from ipguard.config import TrainingCfg
    from ipguard.io import save_model_file
    from ipguard.models import PixelModel, create_model, model_meta, model_tensors
    from ipguard.training import train

    root = tmp_path_factory.mktemp("zoo")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(digits.target)

    def save(model: PixelModel, arch: str, name: str) -> None:
        save_model_file(root / f"{name}.safetensors", model_tensors(model), model_meta(model, arch, {}, 10, (1, 8, 8), name=name))

    torch.manual_seed(0)
    owner = PixelModel(create_model("mlp", 10, (1, 8, 8)), [0.5], [0.25])
    train(owner, x[:900], y[:900], TrainingCfg(epochs=10), seed=0)
    save(owner, "mlp", "owner")
    with torch.no_grad():  # a copy: the owner's weights, slightly perturbed
        for p in owner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save(owner, "mlp", "copy")
    public = root / "public"
    public.mkdir()
    (public / "archs.py").write_text(MANIFEST_ARCHS)
    entries = []
    for i in range(N_NEG):
        arch = ("mlp", "lenet", "cnn")[i % 3]
        torch.manual_seed(100 + i)
        neg = PixelModel(create_model(arch, 10, (1, 8, 8)), [0.5], [0.25])
        save(neg, arch, f"neg{i:02d}")
        torch.save({"net": neg.net.state_dict(), "acc": 0.1, "epoch": 0}, root / f"neg{i:02d}.ckpt")
        if i < 4:
            file = public / f"pub{i}.{('pth', 'model', 'th', 'ckpt')[i]}"
            torch.save({"state_dict": neg.net.state_dict(), "prec1": 10.0}, file, _use_new_zipfile_serialization=i % 2 == 0)
            entries.append({"name": f"pub{i}", "file": file.name, "arch": arch, "mean": [0.5], "std": [0.25],
                            "sha256": sha256_file(file), "author": "test"})
    (public / "manifest.json").write_text(json.dumps({"description": "test zoo", "models": entries}))
    return root


def _negatives(zoo: Path, lo: int = 0, hi: int = N_NEG - 1) -> list[str]:
    return [str(zoo / f"neg{i:02d}.safetensors") for i in range(lo, hi)]


@pytest.fixture(scope="module")
def raw_set(zoo: Path) -> Path:
    out = zoo / "fp.safetensors"
    assert main(["fingerprint", "--model", str(zoo / "owner.safetensors"), "--n", "40", "--k", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def calibrated(raw_set: Path, zoo: Path) -> Path:
    """The owner's set calibrated on neg00..neg11, written beside it (the default --out)."""
    assert main(["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo)]) == 0
    return raw_set.with_name("fp.calibrated.safetensors")


# ----------------------------------------------------------------------------- verify


def test_verify_json_says_pirated_for_a_copy(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")])
    for key in ("matching_rate", "matches", "n", "p_value", "verdict", "reason", "fingerprint_sha256", "model_sha256",
                "calibration_negatives", "null_mean_matching_rate", "null_spread", "min_p_value", "level"):
        assert key in result, key
    assert result["n"] == 40 and result["verdict"] == "pirated" and result["p_value"] <= 0.01, result
    assert result["calibration_negatives"] == N_NEG - 1 and result["level"] == 0.01
    assert 0 <= result["min_p_value"] <= result["p_value"] and result["null_spread"] >= 0
    assert 0 < result["null_mean_matching_rate"] < 0.5 and result["reason"]


def test_verify_says_independent_for_an_independent_model(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / f"neg{N_NEG - 1}.safetensors")])
    assert result["verdict"] == "independent" and result["p_value"] > 0.01 and result["matching_rate"] < 0.5


def test_verify_human_output_gives_the_verdict_with_its_reason(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("verdict: pirated (p = ") and "level 0.01): " in first and len(first.split("): ", 1)[1]) > 10


def test_too_few_negatives_give_inconclusive_not_pirated(raw_set: Path, zoo: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "two.safetensors"
    assert main(["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo, 0, 2), "--out", str(out)]) == 0
    result = _json(capsys, ["verify", "--fingerprints", str(out), "--model", str(zoo / "copy.safetensors")])
    assert result["verdict"] == "inconclusive" and result["calibration_negatives"] == 2 and result["reason"]
    capsys.readouterr()
    main(["verify", "--fingerprints", str(out), "--model", str(zoo / "copy.safetensors")])
    assert capsys.readouterr().out.startswith("verdict: inconclusive")


def test_old_calibrations_are_refused(calibrated: Path, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, labels, meta = load_fingerprint_file(calibrated)
    old = {"alpha": 1.0, "beta": 20816.0, "negatives": 2, "mean_matching_rate": 0.0, "max_matching_rate": 0.0, "level": 0.01}
    path = tmp_path / "old.safetensors"
    save_fingerprint_file(path, inputs, labels, {**meta, "calibration": old})
    _refused(capsys, ["verify", "--fingerprints", str(path), "--model", str(zoo / "copy.safetensors")],
             "old.safetensors", "calibrated by an older ipguard; run calibrate again")


def test_level_outside_0_1_is_one_line(calibrated: Path, raw_set: Path, zoo: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for level in ("0", "1", "1.5", "-0.01", "nan"):
        _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors"), "--level", level],
                 "--level", "between 0 and 1")
        out = tmp_path / f"l{level}.safetensors"
        _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo, 0, 3),
                          "--level", level, "--out", str(out)], "--level")
        assert not out.exists()
    proc = _run("verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors"), "--level", "2")
    _expect_refusal(proc, "ipguard verify: error: --level")


def test_unexpected_errors_are_one_line(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import ipguard.stats

    def boom(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(ipguard.stats, "assess", boom)
    line = _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")],
                    "ZeroDivisionError: something nobody foresaw second line")
    assert "Traceback" not in line
    monkeypatch.setenv("IPGUARD_DEBUG", "1")  # the traceback, for whoever debugs it
    with pytest.raises(ZeroDivisionError):
        main(["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")])


# ----------------------------------------------------------------------------- foreign models


def test_foreign_model_needs_its_normalisation_or_no_normalize(calibrated: Path, raw_set: Path, zoo: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(zoo / f"neg{N_NEG - 1:02d}.ckpt")  # a {'net', 'acc', 'epoch'} checkpoint of an mlp
    verify = ["verify", "--fingerprints", str(calibrated), "--model", ckpt, "--arch", "mlp"]
    _refused(capsys, verify, ckpt, "needs its input normalisation", "--mean/--std", "--no-normalize")
    _refused(capsys, [*verify, "--mean", "0.5"], "needs its input normalisation")
    _refused(capsys, [*verify, "--mean", "0.5", "--std", "0.25", "--no-normalize"], "not both")
    given = _json(capsys, [*verify, "--mean", "0.5", "--std", "0.25"])
    project = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / f"neg{N_NEG - 1:02d}.safetensors")])
    assert given["matches"] == project["matches"] and given["verdict"] == "independent"
    bare = _json(capsys, [*verify, "--no-normalize"])  # accepted (and here simply a different model)
    assert bare["n"] == 40
    # The owner of `fingerprint` and the negatives of `calibrate` alike.
    _refused(capsys, ["fingerprint", "--model", ckpt, "--arch", "mlp", "--num-classes", "10", "--input-shape", "1,8,8",
                      "--out", str(tmp_path / "x.safetensors")], "needs its input normalisation")
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", ckpt, "--arch", "mlp",
                      "--out", str(tmp_path / "y.safetensors")], "needs its input normalisation")
    assert not list(tmp_path.iterdir())


def test_arch_from_the_users_own_file(calibrated: Path, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.py").write_text(MANIFEST_ARCHS)
    monkeypatch.chdir(tmp_path)
    ckpt = str(zoo / f"neg{N_NEG - 1:02d}.ckpt")
    norm = ["--mean", "0.5", "--std", "0.25"]
    base = ["verify", "--fingerprints", str(calibrated), "--model", ckpt, *norm]
    mine = _json(capsys, [*base, "--arch", "mine.py:build", "--arch-kwargs", '{"arch": "mlp"}'])
    registry = _json(capsys, [*base, "--arch", "mlp"])
    assert mine["matches"] == registry["matches"] and mine["model_sha256"] == registry["model_sha256"]
    _refused(capsys, [*base, "--arch", "mine.py:build"], "missing config key", "arch")
    _refused(capsys, [*base, "--arch", "mine.py:build", "--arch-kwargs", '{"arch": "resnet9000"}'], "resnet9000")
    _refused(capsys, [*base, "--arch", "nothere.py:build"], "nothere.py", "not found")
    _refused(capsys, [*base, "--arch", "mine.py:build", "--arch-kwargs", '{"arch": "lenet"}'], "neg12.ckpt", "do not fit")


def test_missing_and_corrupt_files_are_refused(calibrated: Path, zoo: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    owner = str(zoo / "owner.safetensors")
    _refused(capsys, ["verify", "--fingerprints", str(tmp_path / "none.safetensors"), "--model", owner], "none.safetensors", "not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(bad), "--arch", "cnn", "--no-normalize"],
             "bad.pt", "not a weights file")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    _refused(capsys, ["verify", "--fingerprints", str(broken), "--model", owner], "broken.safetensors")
    _refused(capsys, ["calibrate", "--fingerprints", str(calibrated), "--negatives", str(tmp_path / "gone.safetensors"),
                      "--out", str(tmp_path / "x.safetensors")], "gone.safetensors", "not found")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_pickle_that_would_run_code_is_refused_and_not_run(calibrated: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"state_dict": {"w": _Evil()}}, handle)
    proc = _run("verify", "--fingerprints", str(calibrated), "--model", str(evil), "--arch", "cnn", "--no-normalize", cwd=tmp_path)
    _expect_refusal(proc, "evil.pt", "refused")
    assert not (tmp_path / "PWNED").exists()


def test_models_that_do_not_fit_the_fingerprints_are_refused(calibrated: Path, zoo: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    from ipguard.models import create_model

    seven = tmp_path / "seven.pt"  # the right architecture, 7 classes
    torch.save(create_model("cnn", 7, (1, 8, 8)).state_dict(), seven)
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(seven), "--arch", "cnn", "--no-normalize"], "seven.pt")
    wide = tmp_path / "wide.safetensors"  # a project model whose input shape differs from the fingerprints'
    shutil.copy(zoo / "owner.safetensors", wide)
    meta = json.loads((zoo / "owner.json").read_text())
    meta["input_shape"] = [1, 16, 16]
    wide.with_suffix(".json").write_text(json.dumps(meta))
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(wide)], "wide.safetensors", "[1, 16, 16]")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(seven), "--arch", "resnet9000", "--no-normalize"],
             "resnet9000")


def test_altered_fingerprints_are_refused(calibrated: Path, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    owner = str(zoo / "owner.safetensors")
    tensors = load_file(str(calibrated))
    with safe_open(str(calibrated), framework="pt") as handle:
        header = handle.metadata()
    tensors["labels"] = (tensors["labels"] + 1) % 10  # relabelled, header kept
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), metadata=header)
    _refused(capsys, ["verify", "--fingerprints", str(forged), "--model", owner], "forged.safetensors", "altered")
    wrong_shape = tmp_path / "shape.safetensors"
    save_file({"inputs": torch.rand(3, 64), "labels": torch.zeros(3, dtype=torch.int64)}, str(wrong_shape), metadata=header)
    _refused(capsys, ["verify", "--fingerprints", str(wrong_shape), "--model", owner], "shape.safetensors")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--model", owner, "--expect-sha256", "0" * 64], "sha256")


def test_uncalibrated_set_is_refused(raw_set: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["verify", "--fingerprints", str(raw_set), "--model", str(zoo / "owner.safetensors")], "not calibrated")


def test_help_lists_every_verb_and_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for verb in ("fingerprint", "calibrate", "verify"):
        assert verb in proc.stdout
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--negatives-manifest", "--exclude", "--no-normalize", "--arch-kwargs", "--out"):
        assert flag in text
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = capsys.readouterr().out
    for flag in ("--models-manifest", "--url", "--protocol", "--model-name", "--header", "--max-queries", "--uint8",
                 "--repeat-share", "--query-seed", "--rate", "--retries", "--timeout"):
        assert flag in text


# ----------------------------------------------------------------------------- calibrate


def test_calibrate_writes_a_new_file_and_never_changes_its_input(raw_set: Path, calibrated: Path, zoo: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "r20.safetensors"
    shutil.copy(raw_set, src)
    before = sha256_file(src)
    result = _json(capsys, ["calibrate", "--fingerprints", str(src), "--negatives", *_negatives(zoo, 0, 3)])
    assert result["fingerprints"] == str(tmp_path / "r20.calibrated.safetensors") and sha256_file(src) == before
    assert result["sha256"] == sha256_file(tmp_path / "r20.calibrated.safetensors")
    _, _, meta = load_fingerprint_file(tmp_path / "r20.calibrated.safetensors")
    assert meta["calibration"]["negatives"] == 3 and len(meta["calibration"]["negative_models"]) == 3
    assert "calibration" not in load_fingerprint_file(src)[2]
    # --out equal to the input, by any spelling, is refused and nothing changes.
    for same in (str(src), str(tmp_path / "sub" / ".." / "r20.safetensors")):
        _refused(capsys, ["calibrate", "--fingerprints", str(src), "--negatives", *_negatives(zoo, 0, 3), "--out", same],
                 "--out", "is the input set")
    assert sha256_file(src) == before
    custom = tmp_path / "elsewhere" / "set.safetensors"
    assert main(["calibrate", "--fingerprints", str(src), "--negatives", *_negatives(zoo, 0, 3), "--out", str(custom)]) == 0
    assert custom.is_file() and sha256_file(src) == before
    assert not list(tmp_path.rglob(".*.tmp"))


def test_calibrate_refuses_the_owner_and_the_same_file_twice(raw_set: Path, zoo: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.safetensors"
    owner = str(zoo / "owner.safetensors")
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo, 0, 3), owner, "--out", str(out)],
             "owner.safetensors", "is the owner model itself")
    copy_of_neg = tmp_path / "renamed.safetensors"
    shutil.copy(zoo / "neg01.safetensors", copy_of_neg)
    shutil.copy(zoo / "neg01.json", copy_of_neg.with_suffix(".json"))
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo, 0, 3), str(copy_of_neg),
                      "--out", str(out)], "renamed.safetensors", "is the same file as", "neg01.safetensors")
    # A manifest's file also given by --negatives.
    manifest = zoo / "public" / "manifest.json"
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", str(zoo / "public" / "pub0.pth"), "--arch", "mlp",
                      "--mean", "0.5", "--std", "0.25", "--negatives-manifest", str(manifest), "--out", str(out)],
             "pub0.pth", "is the same file as")
    assert not out.exists()


def test_calibrate_from_a_manifest(raw_set: Path, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = zoo / "public" / "manifest.json"
    out = tmp_path / "m.safetensors"
    result = _json(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives-manifest", str(manifest), "--out", str(out)])
    assert [m["model"] for m in result["negatives"]] == ["pub0", "pub1", "pub2", "pub3"]
    # The manifest's files are the project's neg00..neg03 as foreign checkpoints: same matches.
    direct = _json(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives", *_negatives(zoo, 0, 4),
                            "--out", str(tmp_path / "d.safetensors")])
    assert [m["matches"] for m in result["negatives"]] == [m["matches"] for m in direct["negatives"]]
    # Combined with --negatives, and with models left out for verify.
    both = _json(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives-manifest", str(manifest),
                          "--exclude", "pub1", "pub3.ckpt", "--negatives", *_negatives(zoo, 4, 12), "--out", str(out)])
    assert both["calibration"]["negatives"] == 10
    assert [m["model"] for m in both["negatives"]][:3] == ["neg04.safetensors", "neg05.safetensors", "neg06.safetensors"]
    assert {"pub0", "pub2"} <= {m["model"] for m in both["negatives"]}
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives-manifest", str(manifest), "--exclude", "pub9",
                      "--out", str(out)], "--exclude", "pub9")
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--out", str(out)], "needs negatives")


def test_calibrate_refuses_a_manifest_whose_file_changed(raw_set: Path, zoo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    public = tmp_path / "public"
    shutil.copytree(zoo / "public", public)
    data = json.loads((public / "manifest.json").read_text())
    data["models"][2]["sha256"] = "f" * 64
    (public / "manifest.json").write_text(json.dumps(data))
    out = tmp_path / "c.safetensors"
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives-manifest", str(public / "manifest.json"),
                      "--out", str(out)], "pub2.th", "sha256", "is not the ffffffffffff", "pub2")
    del data["models"][1]["mean"]
    data["models"][2]["sha256"] = sha256_file(public / "pub2.th")
    (public / "manifest.json").write_text(json.dumps(data))
    _refused(capsys, ["calibrate", "--fingerprints", str(raw_set), "--negatives-manifest", str(public / "manifest.json"),
                      "--out", str(out)], "pub1.model", "needs its input normalisation", "'mean'/'std' in")
    assert not out.exists()


# ----------------------------------------------------------------------------- the pipeline's sets and the shared models


def test_pipeline_writes_calibrated_sets_for_verify(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny pipeline's own calibrated set works with verify. With its 3 negatives the
    calibration cannot support the level, so a copy is "inconclusive" (never "independent")."""
    path = workspace / "fingerprints/calibrated/ipguard.safetensors"
    _, _, meta = load_fingerprint_file(path)
    result = _json(capsys, ["verify", "--fingerprints", str(path), "--model", str(workspace / "models/variants/int8.safetensors")])
    assert result["calibration_negatives"] == meta["calibration"]["negatives"]
    assert result["verdict"] in {"pirated", "inconclusive"} and result["reason"]


@pytest.mark.slow  # ~40 s on an idle 2-core machine (generating 50 points on ResNet-20), minutes on a busy one
@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir() or not (PUBLIC / "manifest.json").is_file(),
                    reason="needs ../shared/weights/cifar10-resnet and cifar10-public")
def test_shared_cifar_resnets_against_the_public_zoo(tmp_path: Path) -> None:
    """Fingerprint the shared ResNet-20, calibrate on the public zoo minus two models kept for
    verify: ResNet-20 itself is pirated, the shared ResNet-56 and the kept public models are not."""
    w = {d: str(next(SHARED_WEIGHTS.glob(f"resnet{d}-*.th"))) for d in (20, 56)}
    fp = tmp_path / "r20.safetensors"
    proc = _run("fingerprint", "--model", w[20], "--arch", "cifar_resnet20", *CIFAR_NORM, "--num-classes", "10",
                "--input-shape", "3,32,32", "--n", "50", "--k", "10", "--out", str(fp))
    assert proc.returncode == 0, proc.stderr
    proc = _run("calibrate", "--fingerprints", str(fp), "--negatives-manifest", str(PUBLIC / "manifest.json"),
                "--exclude", "theo_r56", "kejeon_r20", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["calibration"]["negatives"] == 16
    cal = tmp_path / "r20.calibrated.safetensors"
    entries = {e["name"]: e for e in json.loads((PUBLIC / "manifest.json").read_text())["models"]}
    suspects = {"r20": [w[20], "--arch", "cifar_resnet20", *CIFAR_NORM], "r56": [w[56], "--arch", "cifar_resnet56", *CIFAR_NORM]}
    for name in ("theo_r56", "kejeon_r20"):
        e = entries[name]
        suspects[name] = [str(PUBLIC / e["file"]), "--arch", f"{PUBLIC / 'archs.py'}:build", "--arch-kwargs",
                          json.dumps({"arch": e["arch"]}), "--mean", ",".join(map(str, e["mean"])), "--std", ",".join(map(str, e["std"]))]
    verdicts = {}
    for name, args in suspects.items():
        proc = _run("verify", "--fingerprints", str(cal), "--model", *args, "--json")
        assert proc.returncode == 0, proc.stderr
        verdicts[name] = json.loads(proc.stdout)
    assert verdicts["r20"]["verdict"] == "pirated" and verdicts["r20"]["matching_rate"] == 1.0, verdicts["r20"]
    for name in ("r56", "theo_r56", "kejeon_r20"):
        assert verdicts[name]["verdict"] != "pirated", (name, verdicts[name])


# ----------------------------------------------------------------------------- SAC (a continuous score)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out digits (not the owner's first 900) as an ImageFolder of 8x8 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("heldout")
    digits = load_digits()
    for i in range(1200, 1500):
        folder = root / str(digits.target[i])
        folder.mkdir(exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L").save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("method", ["sac", "sac_label"])
def test_sac_sets_calibrate_and_verify_in_the_right_direction(method: str, zoo: Path, digits_folder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """SAC's score is a similarity: the copy scores above every independent model and is pirated;
    a held-out independent model is not; the calibration is the continuous one."""
    raw = tmp_path / f"{method}.safetensors"
    made = _json(capsys, ["fingerprint", "--model", str(zoo / "owner.safetensors"), "--method", method, "--n", "40",
                          "--data", str(digits_folder), "--out", str(raw)])
    assert made["n"] == 40
    inputs, labels, meta = load_fingerprint_file(raw)
    assert meta["score"] == method and inputs.shape == (40, 1, 8, 8)
    cal = _json(capsys, ["calibrate", "--fingerprints", str(raw), "--negatives", *_negatives(zoo)])
    assert cal["calibration"]["kind"] == "continuous" and cal["calibration"]["negatives"] == N_NEG - 1
    scores = [n["matching_rate"] for n in cal["negatives"]]
    assert all(0.0 <= s < 1.0 for s in scores)
    calibrated = Path(cal["fingerprints"])
    # Untrained negatives make a wide null (sac_label: similarities from 0.09 to 0.7), so the copy
    # is judged at the level 0.05 here; what matters is the direction.
    copy = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors"), "--level", "0.05"])
    assert copy["score"] == method and copy["matches"] is None and copy["n"] == 40
    assert copy["matching_rate"] > max(scores) and copy["verdict"] == "pirated" and copy["p_value"] <= 0.05, copy
    other = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / f"neg{N_NEG - 1}.safetensors"),
                           "--level", "0.05"])
    assert other["verdict"] != "pirated" and other["p_value"] > 0.05, other
    capsys.readouterr()
    assert main(["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")]) == 0
    assert f"{method} similarity" in capsys.readouterr().out


# ----------------------------------------------------------------------------- CAE (trains models of its own)


@pytest.fixture(scope="module")
def owner_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The owner's own training digits (its first 900) as an ImageFolder of 8x8 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("owner-data")
    digits = load_digits()
    for i in range(900):
        folder = root / str(digits.target[i])
        folder.mkdir(exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L").save(folder / f"{i}.png")
    return root


def test_cae_trains_on_the_owners_images_and_its_copy_matches(zoo: Path, owner_folder: Path, digits_folder: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--method cae` trains its surrogates and references on --train-data, starts from --data,
    and takes config changes with --set; the copy matches the points better than any negative."""
    owner = str(zoo / "owner.safetensors")
    base = ["fingerprint", "--model", owner, "--method", "cae", "--n", "20", "--data", str(digits_folder)]
    _refused(capsys, [*base, "--out", str(tmp_path / "no.safetensors")], "--train-data")
    _refused(capsys, [*base, "--train-data", str(digits_folder), "--out", str(tmp_path / "no.safetensors")], "must not be --data")
    _refused(capsys, [*base, "--set", "eps", "--train-data", str(owner_folder), "--out", str(tmp_path / "no.safetensors")], "KEY=VALUE")
    assert not (tmp_path / "no.safetensors").exists()
    raw = tmp_path / "cae.safetensors"
    made = _json(capsys, [*base, "--train-data", str(owner_folder), "--set", "eps=0.1", "--set", "alpha=0.01",
                          "--set", "steps=10", "--set", "candidates=80", "--out", str(raw)])
    inputs, labels, meta = load_fingerprint_file(raw)
    assert 0 < made["n"] <= 20 and inputs.shape[0] == made["n"] and meta["config"]["eps"] == 0.1
    assert made["surrogate_agreement"] > made["reference_agreement"]
    cal = _json(capsys, ["calibrate", "--fingerprints", str(raw), "--negatives", *_negatives(zoo)])
    copy = _json(capsys, ["verify", "--fingerprints", cal["fingerprints"], "--model", str(zoo / "copy.safetensors")])
    assert copy["matching_rate"] > max(n["matching_rate"] for n in cal["negatives"]), (copy, cal["negatives"])


def test_calibrate_warns_when_its_null_fails_one_of_its_own_negatives(capsys: pytest.CaptureFixture[str]) -> None:
    from ipguard.cli import _print_human
    from ipguard.stats import fit_calibration

    unlike = [31, 38, 38, 26, 31, 29, 30, 34, 26, 34, 34, 29, 32, 27, 27, 30, 31, 29, 31, 30]
    for counts, warned in ((unlike, False), (unlike + [61], True)):
        names = [f"m{i}" for i in range(len(counts) - 1)] + ["twin"]
        cal = fit_calibration(counts, 100, models=names).to_dict()
        negatives = [{"model": m, "matches": c, "matching_rate": c / 100} for m, c in zip(names, counts)]
        capsys.readouterr()
        _print_human("calibrate", {"calibration": cal, "fingerprints": "out.safetensors", "sha256": "0" * 64,
                                   "input": "in.safetensors", "negatives": negatives})
        out = capsys.readouterr().out
        assert ("warning: left out, twin gets p =" in out) == warned, out
