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

SPLITS = ("owner", "other", "test")
DatasetLoader = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Add a dataset loader to the registry under ``name``."""

    def wrap(fn: DatasetLoader) -> DatasetLoader:
        _DATASETS[name] = fn
        return fn

    return wrap


def load_dataset(name: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled pool of dataset ``name``: float32 pixels in [0, 1] (N, C, H, W), int64 labels."""
    if name not in _DATASETS:
        raise ConfigError(f"dataset.name: unknown dataset '{name}' (known: {', '.join(sorted(_DATASETS))})")
    return _DATASETS[name](root=root)


@register_dataset("digits")
def digits(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits (1,797 8×8 images, 16 grey levels); ships with sklearn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return x, y


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float, other_fraction: float, seed: int
) -> dict[str, Split]:
    """Seeded, stratification-free split into ``owner``, ``other`` and ``test``.

    ``test_fraction`` of the pool is held out; ``other_fraction`` of the rest goes to models that
    must not see the owner's training data, the remainder is the owner's.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction: must lie in (0, 1), got {test_fraction}")
    if not 0.0 < other_fraction < 1.0:
        raise ConfigError(f"dataset.other_fraction: must lie in (0, 1), got {other_fraction}")
    n = int(y.shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    n_other = int(round((n - n_test) * other_fraction))
    parts = {
        "test": order[:n_test],
        "other": order[n_test : n_test + n_other],
        "owner": order[n_test + n_other :],
    }
    return {name: Split(x[idx].contiguous(), y[idx].contiguous()) for name, idx in parts.items()}


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
