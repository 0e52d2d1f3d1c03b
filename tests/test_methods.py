"""Every fingerprint method of the registry yields owner-labelled points of the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ipguard.fingerprint import generate, list_methods
from ipguard.models import load_model, predict
from ipguard.stages.common import load_pool

ROOT = Path(__file__).resolve().parents[1]


def _entries() -> dict[str, dict]:
    out = {}
    for path in sorted((ROOT / "conf/fingerprint").glob("*.yaml")):
        out.update(yaml.safe_load(path.read_text()))
    return out


def test_every_registered_method_has_a_config_and_vice_versa() -> None:
    methods = {e["method"] for e in _entries().values()}
    assert methods == set(list_methods())
    assert {"ipguard", "random_noise", "random_real", "fgsm", "pgd", "cw", "akh"} <= methods


@pytest.mark.parametrize("name", sorted(_entries()))
def test_method_produces_owner_labelled_points(in_workspace: Path, name: str) -> None:
    entry = dict(_entries()[name])
    method = entry.pop("method")
    pool = load_pool(entry.pop("pool", "test"))
    entry["n"] = 12
    if method == "cw":
        entry["steps"] = 10
    owner, _ = load_model("models/zoo/owner.safetensors")
    fp = generate(method, owner, pool, (1, 8, 8), 10, **entry)
    assert fp.inputs.shape[1:] == (1, 8, 8) and 0 < fp.inputs.shape[0] <= 12
    assert fp.inputs.min() >= 0 and fp.inputs.max() <= 1
    assert torch.equal(fp.labels, predict(owner, fp.inputs))
    if method == "akh":
        test = load_pool("heldout")
        wrong = predict(owner, test.x) != test.y
        # Every akh point is a held-out image the owner gets wrong.
        for x in fp.inputs:
            hits = (test.x == x).flatten(1).all(1).nonzero().squeeze(1)
            assert hits.numel() >= 1 and bool(wrong[hits].any())


def test_attacks_move_points_within_budget(in_workspace: Path) -> None:
    owner, _ = load_model("models/zoo/owner.safetensors")
    pool = load_pool("test")
    fp = generate("pgd", owner, pool, (1, 8, 8), 10, n=20, eps=0.1, alpha=0.025, steps=10, seed=0)
    picked = generate("random_real", owner, pool, (1, 8, 8), 10, n=20, seed=0)
    # Same seed, same images: the perturbation stays inside the L-inf ball.
    assert (fp.inputs - picked.inputs).abs().max() <= 0.1 + 1e-6
    assert fp.extra["flipped_share"] > 0.3
