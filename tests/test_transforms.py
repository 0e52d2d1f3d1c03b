"""Input transformations (evasions): each does what its name says, deterministically, and an
evaded copy survives its model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipguard.errors import ConfigError, ModelFileError
from ipguard.io import save_model_file
from ipguard.models import accuracy, load_model, model_meta, model_tensors
from ipguard.postprocess import apply_postprocess
from ipguard.stages.common import load_split
from ipguard.transforms import TRANSFORMS, InputTransform, bit_depth, jpeg, median, noise, resize_pad

KW = {"jpeg": {"quality": 75}, "noise": {"sigma": 0.03}, "bit_depth": {"bits": 3}, "median": {"kernel": 3},
      "resize_pad": {"min_scale": 0.7}}


def _images(n: int = 6, c: int = 3, size: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(n, c, 4, 4), size=(size, size), mode="bilinear")
    return smooth.clamp(0, 1)


@pytest.mark.parametrize("kind", sorted(KW))
def test_every_transformation_keeps_shape_and_range_is_deterministic_and_changes_the_image(kind: str) -> None:
    assert kind in TRANSFORMS.names()
    x = _images()
    t = InputTransform(kind, **KW[kind])
    y = t(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(t(x), y) and not torch.equal(y, x)
    gray = t(_images(c=1))
    assert gray.shape == (6, 1, 16, 16)


def test_each_transformation_does_what_it_says() -> None:
    x = _images()
    levels = bit_depth(x, bits=3) * 7
    assert torch.allclose(levels, levels.round(), atol=1e-5) and (bit_depth(x, 3) - x).abs().max() <= 1 / 14 + 1e-6
    salted = x.clone()
    salted[:, :, 5, 5] = 1.0  # one bright pixel in a smooth image: the median takes it out
    around = x[:, :, 4:7, 4:7].flatten(2)
    filtered = median(salted, 3)[:, :, 5, 5]
    assert bool((filtered <= around.amax(-1) + 1e-6).all() and (filtered >= around.amin(-1) - 1e-6).all())
    assert torch.equal(median(torch.full((1, 1, 5, 5), 0.3), 3), torch.full((1, 1, 5, 5), 0.3))
    n = noise(torch.full((4, 3, 32, 32), 0.5), sigma=0.05, seed=1) - 0.5
    assert abs(float(n.std()) - 0.05) < 0.005 and abs(float(n.mean())) < 0.005
    assert not torch.equal(noise(x, 0.05, seed=1), noise(x, 0.05, seed=2))
    error = {q: float((jpeg(x, q) - x).abs().mean()) for q in (95, 50, 10)}
    assert error[95] < error[50] < error[10] and error[95] < 0.02
    shrunk = resize_pad(torch.ones(8, 3, 20, 20), min_scale=0.5, seed=0)
    assert bool((shrunk == 0).any()) and all(bool((img > 0.5).any()) for img in shrunk)


def test_bad_parameters_are_named_up_front() -> None:
    for kind, kwargs, key in [("jpeg", {"quality": 0}, "jpeg.quality"), ("bit_depth", {"bits": 9}, "bit_depth.bits"),
                              ("noise", {"sigma": 0}, "noise.sigma"), ("median", {"kernel": 1}, "median.kernel"),
                              ("resize_pad", {"min_scale": 1.5}, "resize_pad.min_scale")]:
        with pytest.raises(ConfigError, match=key):
            InputTransform(kind, **kwargs)
    with pytest.raises(ConfigError, match="unknown input transformation 'blur'"):
        InputTransform("blur")
    with pytest.raises(ConfigError, match="qualty"):
        InputTransform("jpeg", qualty=10)


def test_an_evaded_copy_survives_its_file_and_costs_what_it_costs(in_workspace: Path, tmp_path: Path) -> None:
    owner, meta = load_model("models/zoo/owner.safetensors")
    test = load_split("test")
    evaded = apply_postprocess("evade", owner, load_split("owner"), seed=5, transform="noise", params={"sigma": 0.1})
    assert evaded.input_transform is not None and evaded.input_transform.kwargs == {"sigma": 0.1, "seed": 5}
    assert owner.input_transform is None  # the owner is untouched
    vmeta = model_meta(evaded, meta["arch"], meta["arch_kwargs"], meta["num_classes"], meta["input_shape"])
    assert vmeta["input_transform"] == {"kind": "noise", "sigma": 0.1, "seed": 5}
    path = tmp_path / "evaded.safetensors"
    save_model_file(path, model_tensors(evaded), vmeta)
    loaded, _ = load_model(str(path))
    assert torch.equal(loaded(test.x), evaded(test.x)) and not torch.equal(loaded(test.x), owner(test.x))
    assert accuracy(loaded, test.x, test.y) < accuracy(owner, test.x, test.y) + 0.01
    mild = apply_postprocess("evade", owner, load_split("owner"), seed=0, transform="bit_depth", params={"bits": 6})
    assert abs(accuracy(mild, test.x, test.y) - accuracy(owner, test.x, test.y)) < 0.02
    with pytest.raises(ConfigError, match="evade.params"):
        apply_postprocess("evade", owner, load_split("owner"), seed=0, transform="jpeg", params={"quality": 500})
    vmeta["input_transform"] = {"kind": "blur"}
    save_model_file(tmp_path / "bad.safetensors", model_tensors(evaded), vmeta)
    with pytest.raises(ModelFileError, match="bad.safetensors: input_transform"):
        load_model(str(tmp_path / "bad.safetensors"))


def test_the_report_says_which_fingerprints_survive_affordable_evasions() -> None:
    import pandas as pd

    from ipguard.report import evasion_section

    rows = []
    for method, rates in (("ipguard", (1.0, 0.9, 0.2)), ("akh", (1.0, 0.3, 0.1))):
        for (suspect, kind, family, acc), mr in zip((("owner", "owner", "owner", 0.90), ("evade_bits5", "positive", "evasion", 0.89),
                                                     ("evade_jpeg50", "positive", "evasion", 0.80)), rates):
            rows.append({"method": method, "suspect": suspect, "kind": kind, "part": "test", "family": family,
                         "test_accuracy": acc, "matching_rate": mr})
    table = pd.DataFrame(rows)
    verdicts = table.assign(verdict=["pirated", "pirated", "independent", "pirated", "inconclusive", "independent"])
    text = evasion_section(table, verdicts, 0.01)
    assert "| evade_bits5 | test | 1.000 | 0.90 P | 0.30 ? |" in text, text
    assert "| evade_jpeg50 | test | 10.000 | 0.20 I | 0.10 I |" in text, text
    assert "| ipguard | 1 | 1/1 |" in text and "| akh | 1 | 0/1 |" in text, text
    assert evasion_section(table[table["family"] != "evasion"], verdicts, 0.01) == ""
