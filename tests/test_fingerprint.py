"""IPGuard generation: the points are where the method says they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipguard.data import Split
from ipguard.errors import ConfigError
from ipguard.fingerprint import generate, ipguard_loss
from ipguard.io import load_fingerprint_file
from ipguard.models import PixelModel, create_model, load_model
from ipguard.verify import match


def test_owner_matches_its_own_fingerprints(in_workspace: Path) -> None:
    owner, _ = load_model("models/zoo/owner.safetensors")
    inputs, labels, meta = load_fingerprint_file("fingerprints/raw/ipguard.safetensors")
    assert meta["owner_sha256"] == load_model("models/zoo/owner.safetensors")[1]["sha256"]
    assert match(owner, inputs, labels).matching_rate == 1.0
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0


@pytest.mark.parametrize(("k", "start", "target"), [(1.0, "noise", "random"), (5.0, "real", "least_likely")])
def test_converged_points_sit_k_past_the_boundary(in_workspace: Path, k: float, start: str, target: str) -> None:
    """Loss 0 means: the owner says j, i is the runner-up, and g_j - g_i >= k."""
    owner, _ = load_model("models/zoo/owner.safetensors")
    from ipguard.stages.common import load_split

    fp = generate("ipguard", owner, load_split("test"), (1, 8, 8), 10, n=40, k=k, lr=0.01, max_iter=500,
                  start=start, target=target, seed=3)
    assert fp.converged is not None and fp.targets is not None and fp.start_labels is not None
    assert fp.converged.float().mean() >= 0.9, "most points should meet the margin on this small owner"
    with torch.no_grad():
        logits = owner(fp.inputs)
    top2 = logits.topk(2, dim=1).indices
    ok = fp.converged
    assert torch.equal(top2[ok, 0], fp.targets[ok]), "owner must label converged points j"
    assert torch.equal(top2[ok, 1], fp.start_labels[ok]), "i must be the runner-up"
    margin = logits.gather(1, fp.targets[:, None]).squeeze(1) - logits.gather(1, fp.start_labels[:, None]).squeeze(1)
    assert (margin[ok] >= k - 1e-4).all()
    assert torch.equal(fp.labels, logits.argmax(1)), "the label recorded is the owner's label of the final point"
    assert (fp.targets != fp.start_labels).all()
    if target == "least_likely":
        assert fp.targets.unique().numel() >= 1


def test_per_point_adam_equals_torch_adam() -> None:
    """Batched generation keeps one Adam state per point: for one point it is torch's Adam."""
    torch.manual_seed(0)
    model = PixelModel(create_model("mlp", 5, (1, 4, 4), hidden=[16]), [0.5], [0.25]).eval()
    pool = Split(torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.int64))
    fp = generate("ipguard", model, pool, (1, 4, 4), 5, n=1, k=50.0, lr=0.01, max_iter=7, seed=1, clamp=False)
    assert fp.iterations is not None and int(fp.iterations[0]) == 7
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((1, 1, 4, 4), generator=gen).requires_grad_(True)
    i = model(x).argmax(1)
    j = (i + torch.randint(1, 5, (1,), generator=gen)) % 5
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(7):
        opt.zero_grad()
        ipguard_loss(model(x), i, j, 50.0).sum().backward()
        opt.step()
    assert torch.allclose(fp.inputs, x.detach(), atol=1e-6)


def test_points_stop_once_their_loss_is_zero() -> None:
    torch.manual_seed(0)
    model = PixelModel(create_model("mlp", 4, (1, 4, 4), hidden=[8]), [0.5], [0.25]).eval()
    pool = Split(torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.int64))
    fp = generate("ipguard", model, pool, (1, 4, 4), 4, n=20, k=0.1, lr=0.05, max_iter=300, seed=0)
    assert fp.iterations is not None and fp.converged is not None
    # A point that converged stopped moving: one more step budget would not change it.
    again = generate("ipguard", model, pool, (1, 4, 4), 4, n=20, k=0.1, lr=0.05, max_iter=600, seed=0)
    assert torch.equal(fp.inputs[fp.converged], again.inputs[fp.converged])
    assert int(fp.iterations.max()) <= 300


def test_same_seed_same_points() -> None:
    torch.manual_seed(0)
    model = PixelModel(create_model("cnn", 10, (1, 8, 8)), [0.3], [0.4]).eval()
    pool = Split(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.int64))
    a = generate("ipguard", model, pool, (1, 8, 8), 10, n=10, k=1.0, max_iter=50, seed=4)
    b = generate("ipguard", model, pool, (1, 8, 8), 10, n=10, k=1.0, max_iter=50, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)


def test_bad_method_config_is_named() -> None:
    model = PixelModel(create_model("mlp", 10, (1, 8, 8)), [0.3], [0.4])
    pool = Split(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ConfigError, match="fingerprint.ipguard.kappa"):
        generate("ipguard", model, pool, (1, 8, 8), 10, where="fingerprint.ipguard", kappa=3)
    with pytest.raises(ConfigError, match="start"):
        generate("ipguard", model, pool, (1, 8, 8), 10, start="zeros")
    with pytest.raises(ConfigError, match="unknown fingerprint method 'nope'"):
        generate("nope", model, pool, (1, 8, 8), 10)
