"""Every fingerprint method of the registry yields owner-labelled points of the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ipguard.fingerprint import generate, list_methods
from ipguard.models import load_model, predict
from ipguard.errors import ConfigError
from ipguard.stages.common import load_pool, load_split

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
    if "data" in entry:
        entry["data"] = load_split(entry["data"])
    entry["n"] = 12
    if method == "cw":
        entry["steps"] = 10
    if method == "cae":  # 8/255 is half a grey level of the 16-level digits: nothing would flip
        entry.update(eps=0.1, alpha=0.01, steps=10, candidates=40)
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


def test_cae_keeps_points_its_surrogates_follow_and_its_references_do_not(in_workspace: Path) -> None:
    """CAE (Lukas et al., ICLR 2021) on the digits owner: every kept point is a held-out image
    moved within eps that the owner labels anew, ranked by conferrability; the owner's own
    surrogates agree with it there more often than the independent references do."""
    owner, _ = load_model("models/zoo/owner.safetensors")
    pool, data = load_pool("test"), load_split("owner")
    kwargs = dict(n=20, candidates=60, surrogates=[{"method": "distill", "seed": 1, "epochs": 10}, {"method": "extract", "seed": 2, "epochs": 10}],
                  references=[{"seed": 3, "epochs": 10}, {"seed": 4, "epochs": 10}], eps=0.1, alpha=0.01, steps=20, seed=0, data=data)
    fp = generate("cae", owner, pool, (1, 8, 8), 10, **kwargs)
    assert 0 < fp.inputs.shape[0] <= 20 and torch.equal(fp.labels, predict(owner, fp.inputs))
    assert fp.start_labels is not None and bool((fp.start_labels != fp.labels).all())
    picked = generate("random_real", owner, pool, (1, 8, 8), 10, n=60, seed=0).inputs
    for x in fp.inputs:  # within eps of one of the candidates (the same seeded draw as random_real)
        assert float((picked - x).abs().flatten(1).amax(1).min()) <= 0.1 + 1e-6
    assert fp.extra["surrogate_agreement"] > fp.extra["reference_agreement"]
    again = generate("cae", owner, pool, (1, 8, 8), 10, **kwargs)
    assert torch.equal(again.inputs, fp.inputs) and torch.equal(again.labels, fp.labels)


def test_conferrable_mistakes_ranks_the_owners_mistakes_by_its_surrogates(in_workspace: Path) -> None:
    """conferrable_mistakes on the digits owner: every point is a held-out image the owner gets
    wrong, unperturbed, with the owner's label; the n kept are the top of one ranking (the same
    seeds train the same surrogates, so a smaller n keeps a prefix of a larger one's points) by
    conferrability, so their mean conferrability is at least that of all the mistakes."""
    owner, _ = load_model("models/zoo/owner.safetensors")
    pool, data = load_pool("test"), load_split("owner")
    kwargs = dict(surrogates=[{"method": "distill", "seed": 1, "epochs": 10},
                              {"method": "extract_adv", "seed": 2, "epochs": 10, "eps": 0.1, "step": 0.1}],
                  references=[{"seed": 3, "epochs": 10}, {"seed": 4, "epochs": 10}], seed=0, data=data)
    top = generate("conferrable_mistakes", owner, pool, (1, 8, 8), 10, n=3, **kwargs)
    every = generate("conferrable_mistakes", owner, pool, (1, 8, 8), 10, n=len(pool), **kwargs)
    mistakes = generate("akh", owner, pool, (1, 8, 8), 10, n=len(pool), seed=0)
    assert top.inputs.shape[0] == 3 and every.inputs.shape[0] == mistakes.inputs.shape[0] == every.extra["available"]
    for x in every.inputs:  # each one of the owner's mistakes, unperturbed
        assert bool((mistakes.inputs == x).flatten(1).all(1).any())
    assert torch.equal(every.labels, predict(owner, every.inputs))
    assert torch.equal(every.inputs[:3], top.inputs) and torch.equal(every.labels[:3], top.labels)
    assert top.extra["conferrability"] >= every.extra["conferrability"]
    assert 0 <= every.extra["reference_agreement"] <= 1 and 0 <= every.extra["surrogate_agreement"] <= 1


_BOTH = ("cae", "conferrable_mistakes")


@pytest.mark.parametrize(
    ("method", "change", "message"),
    [
        *((m, {"data": None}, "training images") for m in _BOTH),
        *((m, {"surrogates": []}, "surrogates") for m in _BOTH),
        *((m, {"surrogates": [{"method": "ftal"}]}, r"surrogates\[0\].method") for m in _BOTH),
        *((m, {"references": [{"seed": 1, "widths": 3}]}, r"references\[0\]: unknown key 'widths'") for m in _BOTH),
        ("conferrable_mistakes", {"n": 0}, "n >= 1"),
        ("cae", {"candidates": 5}, "candidates >= n"),
        ("cae", {"eps": 0.0}, "eps > 0"),
    ],
)
def test_surrogate_methods_reject_bad_settings_before_training(in_workspace: Path, method: str, change: dict, message: str) -> None:
    owner, _ = load_model("models/zoo/owner.safetensors")
    kwargs = dict(n=10, surrogates=[{"method": "distill"}], references=[{"seed": 3}], data=load_split("owner"))
    if method == "cae":
        kwargs["candidates"] = 20
    with pytest.raises(ConfigError, match=message):
        generate(method, owner, load_pool("test"), (1, 8, 8), 10, **(kwargs | change))
