"""Foreign model files as they come, and architectures from the user's own code.

Checkpoints are told apart by content (zip, legacy pickle, safetensors), their containers are
unwrapped, and nothing but tensors is ever unpickled; ``module:function`` and
``file.py:function`` architectures build models for the CLI and for zoo entries alike. With
``../shared`` present, every public CIFAR-10 checkpoint loads and scores what its manifest says.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import SHARED
from ipguard.config import params_from_dict
from ipguard.errors import ConfigError, ModelFileError
from ipguard.foreign import (
    check_manifest_file,
    load_suspect,
    read_manifest,
    read_state_dict,
    unwrap_state_dict,
    weights_format,
)
from ipguard.io import save_model_file, sha256_file
from ipguard.models import build_model, create_model, load_model, model_meta, model_tensors, user_arch

PUBLIC = SHARED / "weights" / "cifar10-public"
CIFAR_TEST = SHARED / "data" / "cifar10-jpeg" / "test"


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("cnn", 10, (1, 8, 8)).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- formats by content


@pytest.mark.parametrize("name", ["w.pth", "w.th", "w.model", "w.ckpt", "w.bin", "weights"])
def test_torch_files_are_recognised_by_content_not_name(tmp_path: Path, name: str) -> None:
    state = _state()
    zipped, legacy = tmp_path / f"zip-{name}", tmp_path / f"legacy-{name}"
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert zipped.read_bytes()[:4] == b"PK\x03\x04" and legacy.read_bytes()[:2] == b"\x80\x02"
    assert weights_format(zipped) == "torch-zip" and weights_format(legacy) == "torch-pickle"
    assert _same(read_state_dict(zipped), state) and _same(read_state_dict(legacy), state)


def test_safetensors_is_recognised_by_its_header_whatever_the_name(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "w.pth"  # a misleading name
    save_file(state, str(path))
    assert weights_format(path) == "safetensors"
    loaded = read_state_dict(path)  # safetensors stores names sorted
    assert _same({k: loaded[k] for k in state}, state) and set(loaded) == set(state)


@pytest.mark.parametrize("content, needle", [
    (b"", "empty file"),
    (b"this is not a torch file", "not a weights file"),
    (b"\x80\x01old pickle protocol", "not a weights file"),
    (b"\xff" * 8 + b"{}", "not a weights file"),  # a safetensors-like header longer than the file
])
def test_other_files_are_refused_with_a_clear_message(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=needle) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="none.pth: file not found"):
        read_state_dict(tmp_path / "none.pth")


def test_truncated_torch_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(_state(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="not a readable PyTorch weights file"):
        read_state_dict(path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_in_a_checkpoint_is_refused_and_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"net": _state(), "hook": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelFileError, match="refused"):
        read_state_dict(path)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- containers


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"net": s, "acc": 92.12, "epoch": 198},
    lambda s: {"state_dict": s, "prec1": 91.47},
    lambda s: {"state_dict": s, "precision": 90.2},
    lambda s: {"model_state_dict": s, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3},
    lambda s: {"model": s, "args": {"lr": 0.1}},
    lambda s: {"model": {"state_dict": s}, "epoch": 1},  # a container inside a container
    lambda s: {"checkpoint_name": "x", "net": {"model": s}},
])
def test_usual_containers_are_unwrapped_and_their_other_entries_ignored(tmp_path: Path, wrap: object) -> None:
    state = _state()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state), path)  # type: ignore[operator]
    assert _same(read_state_dict(path), state)


def test_prefixes_are_stripped() -> None:
    state = _state()
    wrapped = {"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}}
    assert _same(unwrap_state_dict(wrapped, "x"), state)


def test_a_mapping_without_weights_is_refused_naming_the_entry() -> None:
    with pytest.raises(ModelFileError, match=r"x: holds no state dict: entry 'epoch' \(int\) is not a tensor.*keys: 'epoch', 'weights'"):
        unwrap_state_dict({"epoch": 3, "weights": _state()}, "x")
    with pytest.raises(ModelFileError, match=r"entry 'w' \(str\) is not a tensor"):
        unwrap_state_dict({"net": {"w": "text"}}, "x")
    with pytest.raises(ModelFileError, match="holds a list"):
        unwrap_state_dict([torch.zeros(1)], "x")
    with pytest.raises(ModelFileError, match="empty mapping"):
        unwrap_state_dict({"state_dict": {}}, "x")
    too_deep = {"model": {"model": {"model": _state()}}}
    with pytest.raises(ModelFileError, match="holds no state dict within 2 levels of containers"):
        unwrap_state_dict(too_deep, "x")


# ----------------------------------------------------------------------------- the user's architectures

USER_ARCHS = '''
import torch.nn as nn

LOADED = getattr(__import__("builtins"), "_ipguard_test_loads", 0) + 1
__import__("builtins")._ipguard_test_loads = LOADED


def both(num_classes, input_shape, hidden=8):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def classes_only(width, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))


def neither():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def not_a_module():
    return "a string"


def broken(num_classes):
    raise KeyError("resnet9000")
'''


@pytest.fixture()
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with the user's architectures as a file and as an importable package."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "archs.py").write_text(USER_ARCHS)
    pkg = tmp_path / "usernets_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_ARCHS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("usernets_for_test")]:
        del sys.modules[name]


@pytest.mark.parametrize("spec", ["code/archs.py:both", "usernets_for_test.nets:both"])
def test_user_function_gets_num_classes_and_input_shape_when_it_takes_them(user_code: Path, spec: str) -> None:
    net = create_model(spec, 5, (1, 8, 8), hidden=4)
    assert isinstance(net, nn.Module) and net(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    net = create_model(spec.replace("both", "classes_only"), 7, (1, 8, 8), width=64)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    net = create_model(spec.replace("both", "neither"), 7, (1, 8, 8))  # takes neither: gets neither
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_absolute_paths_work_and_a_file_is_loaded_once(user_code: Path) -> None:
    import builtins

    spec = f"{user_code / 'code' / 'archs.py'}:both"
    before = getattr(builtins, "_ipguard_test_loads", 0)
    create_model(spec, 2, (1, 4, 4))
    create_model(spec, 2, (1, 4, 4))
    create_model("code/archs.py:neither", 2, (1, 4, 4))  # the same file by a relative path
    assert getattr(builtins, "_ipguard_test_loads", 0) == before + 1


def test_two_files_of_the_same_name_do_not_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for width in (3, 4):
        (tmp_path / f"v{width}").mkdir()
        (tmp_path / f"v{width}" / "archs.py").write_text(
            f"import torch.nn as nn\ndef build(num_classes):\n    return nn.Linear({width}, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    assert create_model("v3/archs.py:build", 2, (3,)).in_features == 3
    assert create_model("v4/archs.py:build", 2, (3,)).in_features == 4
    assert user_arch("v3/archs.py:build").__module__ != user_arch("v4/archs.py:build").__module__


@pytest.mark.parametrize("spec, kwargs, needle", [
    ("code/archs.py:not_a_module", {}, "returned a str, not a torch.nn.Module"),
    ("code/archs.py:broken", {}, "'code/archs.py:broken' failed with kwargs {} (KeyError: 'resnet9000')"),
    ("code/archs.py:missing", {}, "has no function 'missing'"),
    ("code/nothere.py:both", {}, "file 'code/nothere.py' not found"),
    ("usernets_for_test.nope:both", {}, "no module named 'usernets_for_test.nope'"),
    ("code/archs.py:both", {"depth": 3}, "unknown config key 'zoo.models.m.kwargs.depth'"),
    ("code/archs.py:classes_only", {}, "missing config key 'zoo.models.m.kwargs.width'"),
    ("code/archs.py:", {}, "is not module:function"),
])
def test_bad_user_architectures_are_named(user_code: Path, spec: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(spec, 2, (1, 8, 8), where="zoo.models.m.arch", **kwargs)
    assert needle in str(info.value)


def test_a_user_file_that_fails_to_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    (tmp_path / "syntax.py").write_text("def build(:\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'bad.py:build': loading bad.py failed \(RuntimeError: no GPU here\)"):
        create_model("bad.py:build", 2, (1, 8, 8))
    with pytest.raises(ConfigError, match="loading syntax.py failed .SyntaxError"):
        create_model("syntax.py:build", 2, (1, 8, 8))
    # A model file's build errors come back as ModelFileError naming the file.
    meta = {"arch": "bad.py:build", "num_classes": 2, "input_shape": [1, 8, 8], "normalization": {"mean": [0], "std": [1]}}
    with pytest.raises(ModelFileError, match="m.safetensors.*bad.py:build"):
        build_model(meta, source="m.safetensors")


def test_registry_names_and_timm_still_resolve() -> None:
    assert create_model("cnn", 10, (1, 8, 8)).classifier.out_features == 10
    with pytest.raises(ConfigError, match="unknown architecture 'resnet9000'.*module:function"):
        create_model("resnet9000", 10, (1, 8, 8))


def test_zoo_entry_with_user_arch_loads_and_rebuilds_from_its_sidecar(user_code: Path) -> None:
    """A `source: file` zoo entry with `arch: file.py:function` and kwargs passes the schema,
    imports as the train stage does, and later stages rebuild it from the sidecar alone."""
    params = params_from_dict({"zoo": {"models": {"pub": {
        "arch": "code/archs.py:both", "kwargs": {"hidden": 6}, "source": "file", "path": "pub.ckpt"}}}})
    spec = params.zoo.models["pub"]
    torch.manual_seed(1)
    torch.save({"net": create_model(spec.arch, 10, (1, 8, 8), **spec.kwargs).state_dict(), "acc": 0.5}, "pub.ckpt")
    model, _ = load_suspect(spec.path, spec.arch, [0.5], [0.25], 10, (1, 8, 8), spec.key_map, spec.kwargs)
    meta = model_meta(model, spec.arch, spec.kwargs, 10, (1, 8, 8), name="pub")
    save_model_file("pub.safetensors", model_tensors(model), meta)
    again, stored = load_model("pub.safetensors")
    assert stored["arch"] == "code/archs.py:both" and stored["arch_kwargs"] == {"hidden": 6}
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), again(x))


# ----------------------------------------------------------------------------- manifests


def test_manifest_models_resolve_through_archs_build(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "archs.py").write_text(
        "import torch.nn as nn\n"
        "def build(arch, num_classes=10):\n"
        "    return {'tiny': lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))}[arch]()\n")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    torch.save({"net": net.state_dict(), "epoch": 3}, zoo / "a.model")
    entry = {"name": "a", "file": "a.model", "arch": "tiny", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
             "sha256": sha256_file(zoo / "a.model")}
    (zoo / "manifest.json").write_text(json.dumps({"models": [entry]}))
    (model,) = read_manifest(zoo / "manifest.json")
    assert model.arch == f"{zoo / 'archs.py'}:build" and model.arch_kwargs == {"arch": "tiny"}
    assert check_manifest_file(model, "m") == entry["sha256"]
    pixel, meta = load_suspect(model.path, model.arch, model.mean, model.std, 10, (3, 2, 2), arch_kwargs=model.arch_kwargs)
    x = torch.rand(2, 3, 2, 2)
    assert torch.allclose(pixel(x), net((x - 0.5) / 0.2), atol=1e-6)
    # A file that is not the one the manifest lists is refused.
    (zoo / "manifest.json").write_text(json.dumps({"models": [{**entry, "sha256": "0" * 64}]}))
    with pytest.raises(ModelFileError, match="a.model: sha256 .* is not the 000000000000… that m records for 'a'"):
        check_manifest_file(read_manifest(zoo / "manifest.json")[0], "m")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a readable JSON manifest"),
    ('{"models": []}', "non-empty list 'models'"),
    ('{"models": [{"file": "a.pth"}]}', "models[0]: lacks the key 'arch'"),
    ('{"models": [{"file": "a.pth", "arch": "x", "mean": "0.5"}]}', "models[0].mean: must be a list of numbers"),
    ('{"models": [{"file": "a.pth", "arch": "x", "sha256": "abc"}]}', "models[0].sha256: must be 64 hex digits"),
])
def test_bad_manifests_are_named(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "archs.py").write_text("def build(arch):\n    pass\n")
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ConfigError) as info:
        read_manifest(tmp_path / "manifest.json")
    assert needle in str(info.value) and "manifest.json" in str(info.value)


def test_a_manifest_without_archs_py_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"models": [{"file": "a.pth", "arch": "x"}]}')
    with pytest.raises(ConfigError, match="archs.py not found beside the manifest"):
        read_manifest(tmp_path / "manifest.json")


# ----------------------------------------------------------------------------- the public zoo (../shared)

N_PER_CLASS = 30  # 300 images: the first of each class's sorted files, a subset of the manifest's 2,000


@pytest.fixture(scope="module")
def cifar_sample() -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image

    classes = sorted(p.name for p in CIFAR_TEST.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for file in sorted((CIFAR_TEST / name).iterdir())[:N_PER_CLASS]:
            with Image.open(file) as img:
                xs.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


NEEDS_PUBLIC = pytest.mark.skipif(not (PUBLIC / "manifest.json").is_file() or not CIFAR_TEST.is_dir(),
                                  reason="needs ../shared/weights/cifar10-public and ../shared/data/cifar10-jpeg")
# The default suite scores three files that differ in everything the loader must handle:
# .model (zip, plain), .ckpt (zip, plain), legacy pickle with a {'net', 'acc', 'epoch'} wrapper.
QUICK = ("eteresh_r20", "valerkabvv_r20", "guaguakai_cnn6")


def _score_public(names: tuple[str, ...] | None, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Load every file of the public manifest through load_suspect as the manifest describes it
    (sha256, arch through archs.py, mean/std); score ``names`` (all if None) on the sample and
    compare with the manifest's acc_jpeg2000 (within 0.08: 3.5 binomial sd on 300 images)."""
    x, y = sample
    entries = {e["name"]: e for e in json.loads((PUBLIC / "manifest.json").read_text())["models"]}
    start = time.perf_counter()
    scores = {}
    models = read_manifest(PUBLIC / "manifest.json")
    assert len(models) == 18
    for model in models:
        assert check_manifest_file(model, "manifest") == entries[model.name]["sha256"]
        pixel, meta = load_suspect(model.path, model.arch, model.mean, model.std, 10, (3, 32, 32), arch_kwargs=model.arch_kwargs)
        assert meta["sha256"] == entries[model.name]["sha256"]
        if names is None or model.name in names:
            with torch.no_grad():
                scores[model.name] = float((pixel(x).argmax(1) == y).float().mean())
    assert len(scores) == len(names or models)
    off = {k: (round(v, 3), entries[k]["acc_jpeg2000"]) for k, v in scores.items() if abs(v - entries[k]["acc_jpeg2000"]) > 0.08}
    assert not off, off
    print(f"18 public models loaded, {len(scores)} scored on {len(y)} images in {time.perf_counter() - start:.1f} s")


@NEEDS_PUBLIC
def test_every_public_checkpoint_loads_and_three_score_their_manifest_accuracy(
    cifar_sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _score_public(QUICK, cifar_sample)


@pytest.mark.slow
@NEEDS_PUBLIC
def test_every_public_checkpoint_scores_its_manifest_accuracy(cifar_sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    """All 18 (.pth/.th/.model/.ckpt, zip and legacy, wrapped or not, seven architectures):
    ~10 s on an idle 2-core machine, up to a minute on a busy one."""
    _score_public(None, cifar_sample)
