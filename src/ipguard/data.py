"""Datasets as pixel tensors in [0, 1], and the seeded splits every stage shares.

A dataset is a registry entry returning ``(x, y)`` for the whole labelled pool; :func:`split`
cuts it into the owner's training data (``owner``), a disjoint part for models trained on other
data (``other``), and a held-out ``test`` split used for accuracy and for real-image starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ipguard.errors import ConfigError
from ipguard.registry import Registry

SPLITS = ("owner", "other", "test")
Parts = dict[str, tuple[torch.Tensor, torch.Tensor]]
DatasetLoader = Callable[..., Parts]
DATASETS: Registry[DatasetLoader] = Registry("dataset", leading=("root",))
register_dataset = DATASETS.register


def load_dataset(name: str, root: str | None = None) -> Parts:
    """Dataset ``name`` as float32 pixels in [0, 1] (N, C, H, W) and int64 labels.

    Either one labelled ``pool`` (cut into owner/other/test by :func:`split`), or the dataset's
    own ``train`` and ``test`` parts (train is cut into owner/other; test is kept).
    """
    return DATASETS.get(name, "dataset.name")(root=root)


@register_dataset("digits")
def digits(root: str | None = None) -> Parts:
    """scikit-learn's handwritten digits (1,797 8×8 images, 16 grey levels); ships with sklearn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return {"pool": (x, y)}


def _torchvision_cifar(cls_name: str, root: str | None) -> Parts:
    """CIFAR from a local ImageFolder tree (``root/{train,test}/<class>/``), else torchvision's
    download into ``data/raw/`` (the path real users with internet take)."""
    from pathlib import Path

    if root is not None:
        if not (Path(root) / "train").is_dir() or not (Path(root) / "test").is_dir():
            raise ConfigError(f"dataset.root: {root} must hold train/<class>/ and test/<class>/ image folders")
        return {part: _folder_tensors(str(Path(root) / part)) for part in ("train", "test")}
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    out = {}
    for part, train in (("train", True), ("test", False)):
        ds = cls(root="data/raw", train=train, download=True)
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float().div(255)
        out[part] = (x, torch.as_tensor(ds.targets, dtype=torch.int64))
    return out


def _folder_tensors(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder tree at its own size, as [0, 1] pixels (folder order = class)."""
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor

    folder = datasets.ImageFolder(root)
    if len(folder) == 0:
        raise ConfigError(f"dataset.root: {root} holds no images")
    xs = [pil_to_tensor(folder.loader(path).convert("RGB")) for path, _ in folder.samples]
    return torch.stack(xs).float().div(255), torch.tensor(folder.targets, dtype=torch.int64)


@register_dataset("cifar10")
def cifar10(root: str | None = None) -> Parts:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32×32 colour images, 10 classes."""
    return _torchvision_cifar("CIFAR10", root)


@register_dataset("cifar100")
def cifar100(root: str | None = None) -> Parts:
    """CIFAR-100 (Krizhevsky 2009): 50,000 + 10,000 32×32 colour images, 100 classes."""
    return _torchvision_cifar("CIFAR100", root)


@register_dataset("imagenet")
def imagenet(root: str | None = None, num_classes: int = 1000) -> Parts:
    """ImageNet (ILSVRC-2012) from a local ImageFolder tree of validation images (``root/<wnid>/``),
    with the standard preprocessing: shorter side resized to 256, centre crop of 224×224.

    ImageNet cannot be downloaded by torchvision, so ``dataset.root`` is required. The folders
    must be the 1,000 synsets, whose sorted order is the standard class index that pretrained
    models predict. The whole tree is held in memory as one labelled ``pool``.
    """
    from pathlib import Path

    from torchvision import datasets, transforms

    if root is None or not Path(root).is_dir():
        raise ConfigError(f"dataset.root: ImageNet needs a local folder of <wnid>/ image folders, got {root!r}")
    steps = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    folder = datasets.ImageFolder(root, transform=steps)
    if len(folder.classes) != num_classes:
        raise ConfigError(
            f"dataset.root: {root} holds {len(folder.classes)} class folders; ImageNet's class index needs all {num_classes}"
        )
    x = torch.stack([folder[i][0] for i in range(len(folder))])
    return {"pool": (x.float().div(255), torch.tensor(folder.targets, dtype=torch.int64))}


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def split(parts: Parts, test_fraction: float, other_fraction: float, seed: int) -> dict[str, Split]:
    """Seeded, stratification-free split into ``owner``, ``other`` and ``test``.

    From one ``pool``: ``test_fraction`` of it is held out. From ``train`` and ``test`` parts: the
    dataset's own test part is kept. Then ``other_fraction`` of the rest goes to models that must
    not see the owner's training data, and the remainder is the owner's.
    """
    if not 0.0 < other_fraction < 1.0:
        raise ConfigError(f"dataset.other_fraction: must lie in (0, 1), got {other_fraction}")
    gen = torch.Generator().manual_seed(seed)
    if "pool" in parts:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"dataset.test_fraction: must lie in (0, 1), got {test_fraction}")
        x, y = parts["pool"]
        order = torch.randperm(int(y.shape[0]), generator=gen)
        n_test = int(round(len(order) * test_fraction))
        test = Split(x[order[:n_test]].contiguous(), y[order[:n_test]].contiguous())
        rest = order[n_test:]
    else:
        x, y = parts["train"]
        test = Split(*parts["test"])
        rest = torch.randperm(int(y.shape[0]), generator=gen)
    n_other = int(round(len(rest) * other_fraction))
    other, owner = rest[:n_other], rest[n_other:]
    return {
        "test": test,
        "other": Split(x[other].contiguous(), y[other].contiguous()),
        "owner": Split(x[owner].contiguous(), y[owner].contiguous()),
    }


def image_folder(root: str, input_shape: tuple[int, ...], limit: int | None = None, seed: int = 0) -> Split:
    """An ImageFolder tree (``root/<class>/<image>``) as pixels in [0, 1] of ``input_shape``.

    Images are resized (shorter side) and centre-cropped to the input size; class indices follow
    the sorted folder names. ``limit`` keeps a seeded random subset.
    """
    from pathlib import Path

    from torchvision import datasets, transforms

    if not Path(root).is_dir():
        raise ConfigError(f"{root}: not a folder of class sub-folders (ImageFolder)")
    channels, height, width = input_shape
    steps = [transforms.Resize(min(height, width)), transforms.CenterCrop((height, width))]
    if channels == 1:
        steps.append(transforms.Grayscale())
    folder = datasets.ImageFolder(root, transform=transforms.Compose([*steps, transforms.ToTensor()]))
    if len(folder) == 0:
        raise ConfigError(f"{root}: holds no images")
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed)).tolist()
    if limit is not None:
        order = order[:limit]
    xs, ys = zip(*(folder[i] for i in order))
    return Split(torch.stack(list(xs)), torch.tensor(ys, dtype=torch.int64))
