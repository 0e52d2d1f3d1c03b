"""data.split: the owner's data, the independents' data and the test data share no example.

A shared example would leak: an "independent" model trained on some of the owner's examples is
not independent, and a test accuracy measured on training examples is not a test accuracy. The
data here are index tensors (example k has pixel value k), so identity can be checked exactly.
"""

from __future__ import annotations

import pytest
import torch

from ipguard.data import SPLITS, Split, split
from ipguard.errors import ConfigError


def _ids(part: Split) -> list[int]:
    return part.x.flatten(1)[:, 0].long().tolist()


def _indexed(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` examples numbered from ``start``: pixels hold the number, the label is it mod 10."""
    ids = torch.arange(start, start + count, dtype=torch.float32)
    return ids.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous(), torch.arange(start, start + count) % 10


def _check_aligned(parts: dict[str, Split]) -> None:
    for name, part in parts.items():
        assert torch.equal(part.y, torch.tensor(_ids(part), dtype=torch.int64) % 10), f"{name}: labels moved apart from their images"
        assert len(set(_ids(part))) == len(part), f"{name}: an example appears twice"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_one_pool_splits_into_three_disjoint_parts_that_cover_it(seed: int) -> None:
    parts = split({"pool": _indexed(0, 1000)}, test_fraction=0.25, other_fraction=0.4, seed=seed)
    assert set(parts) == set(SPLITS)
    ids = {name: set(_ids(part)) for name, part in parts.items()}
    assert not ids["owner"] & ids["other"], "owner and other share examples"
    assert not ids["owner"] & ids["test"], "owner and test share examples"
    assert not ids["other"] & ids["test"], "other and test share examples"
    assert ids["owner"] | ids["other"] | ids["test"] == set(range(1000)), "some examples were dropped"
    assert (len(parts["test"]), len(parts["other"]), len(parts["owner"])) == (250, 300, 450)
    _check_aligned(parts)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_test_form_keeps_the_test_part_and_splits_train_disjointly(seed: int) -> None:
    train, test = _indexed(0, 600), _indexed(10_000, 150)
    parts = split({"train": train, "test": test}, test_fraction=0.25, other_fraction=0.5, seed=seed)
    ids = {name: set(_ids(part)) for name, part in parts.items()}
    assert not ids["owner"] & ids["other"], "owner and other share examples"
    assert ids["owner"] | ids["other"] == set(range(600)), "train examples were dropped or added"
    assert torch.equal(parts["test"].x, test[0]) and torch.equal(parts["test"].y, test[1]), "the dataset's own test part is kept as is"
    assert not (ids["owner"] | ids["other"]) & ids["test"]
    assert (len(parts["other"]), len(parts["owner"])) == (300, 300)
    _check_aligned(parts)


def test_split_is_seeded() -> None:
    pool = {"pool": _indexed(0, 200)}
    a = split(pool, 0.2, 0.5, seed=3)
    b = split(pool, 0.2, 0.5, seed=3)
    c = split(pool, 0.2, 0.5, seed=4)
    assert all(torch.equal(a[s].x, b[s].x) for s in SPLITS)
    assert _ids(a["owner"]) != _ids(c["owner"])


def test_split_parts_are_copies_not_views_of_each_other() -> None:
    """Writing into one part (a transform in place) must not change another."""
    parts = split({"pool": _indexed(0, 100)}, 0.2, 0.5, seed=0)
    before = {s: parts[s].x.clone() for s in SPLITS}
    parts["owner"].x.fill_(-1.0)
    assert torch.equal(parts["other"].x, before["other"]) and torch.equal(parts["test"].x, before["test"])


@pytest.mark.parametrize(("test_fraction", "other_fraction", "key"), [(0.0, 0.5, "test_fraction"), (0.2, 1.0, "other_fraction")])
def test_bad_fractions_are_named(test_fraction: float, other_fraction: float, key: str) -> None:
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        split({"pool": _indexed(0, 10)}, test_fraction, other_fraction, seed=0)
