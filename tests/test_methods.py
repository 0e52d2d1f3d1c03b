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


def test_sac_queries_are_held_out_images_with_a_corner_square_and_keep_the_owners_logits(in_workspace: Path) -> None:
    from ipguard.models import logits

    owner, _ = load_model("models/zoo/owner.safetensors")
    pool = load_pool("test")
    big = torch.rand(40, 3, 30, 30)  # SAC-m's geometry on a size where the square is 6x6
    fp = generate("sac", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2700, 10)),
                  type(pool)(big, torch.zeros(40, dtype=torch.int64)), (3, 30, 30), 10, n=20, query="cutmix", seed=0)
    assert fp.score == "sac" and fp.outputs is not None and fp.outputs.shape == (20, 10)
    for x in fp.inputs:
        # The image it came from: the one it equals outside some 6x6 square near a corner.
        diff = (big != x).any(1)  # (40, 30, 30): where each pool image differs from the query
        source = int(diff.flatten(1).sum(1).argmin())
        ys, xs = diff[source].nonzero(as_tuple=True)
        if ys.numel():
            assert ys.max() - ys.min() < 6 and xs.max() - xs.min() < 6
            # Its centre was drawn in the outer sixth (< 5 or > 25) on both axes; the square's own
            # middle sits up to a pixel inward (an even side, clipped at the border).
            cy, cx = float(ys.float().mean()), float(xs.float().mean())
            assert not (6 < cy < 24) and not (6 < cx < 24), (cy, cx)
    w = generate("sac", owner, pool, (1, 8, 8), 10, n=12, query="misclassified", seed=0)
    assert torch.equal(w.outputs, logits(owner, w.inputs)) and torch.equal(w.labels, w.outputs.argmax(1))
    labels_only = generate("sac_label", owner, pool, (1, 8, 8), 10, n=12, query="cutmix", seed=0)
    assert labels_only.score == "sac_label" and labels_only.outputs is None
    with pytest.raises(Exception, match="query"):
        generate("sac", owner, pool, (1, 8, 8), 10, n=12, query="mixup", seed=0)
