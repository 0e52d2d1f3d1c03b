"""IPGuard generation: the points are where the method says they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

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


def _reference_module() -> ModuleType:
    """benchmarks/reference_ipguard.py: the plain per-point loop (torch's Adam, one point at a time)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_ipguard.py"
    spec = importlib.util.spec_from_file_location("reference_ipguard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _starts_and_targets(
    model: PixelModel, pool: Split, n: int, shape: tuple[int, ...], classes: int, start: str, target: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0, i and j drawn as the method documents them (DESIGN §1), rebuilt here independently."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, *shape), generator=gen) if start == "noise" else pool.x[torch.randperm(len(pool), generator=gen)[:n]].clone()
    with torch.no_grad():
        logits = model(x0)
    i = logits.argmax(1)
    j = (i + torch.randint(1, classes, (n,), generator=gen)) % classes if target == "random" else logits.argmin(1)
    return x0, i, j


@pytest.mark.parametrize("start", ["noise", "real"])
def test_least_likely_target_is_the_owners_argmin_at_the_start(start: str) -> None:
    torch.manual_seed(0)
    shape, classes, n = (1, 4, 4), 7, 16
    model = PixelModel(create_model("mlp", classes, shape, hidden=[16]), [0.5], [0.25]).eval()
    pool = Split(torch.rand(20, *shape), torch.zeros(20, dtype=torch.int64))
    x0, i, j = _starts_and_targets(model, pool, n, shape, classes, start, "least_likely", seed=5)
    assert j.unique().numel() > 1 and (i != j).all(), "the case must not be degenerate"
    fp = generate("ipguard", model, pool, shape, classes, n=n, k=0.5, lr=0.05, max_iter=20, start=start, target="least_likely", seed=5)
    assert fp.targets is not None and fp.start_labels is not None
    assert torch.equal(fp.start_labels, i)
    assert torch.equal(fp.targets, j), "least_likely: the target is the owner's lowest logit at x0"
    # With no step taken the points are the starts themselves: the targets are their argmin.
    still = generate("ipguard", model, pool, shape, classes, n=n, max_iter=0, start=start, target="least_likely", seed=5)
    assert torch.equal(still.inputs, x0)
    with torch.no_grad():
        assert torch.equal(still.targets, model(still.inputs).argmin(1))  # type: ignore[arg-type]


# The reference loop reads its loss with float() on a tensor that requires grad; torch warns.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
@pytest.mark.parametrize(("start", "target"), [("noise", "random"), ("real", "least_likely")])
@pytest.mark.parametrize("batch_size", [0, 5, 1])
def test_batched_generation_equals_generating_each_point_alone(start: str, target: str, batch_size: int) -> None:
    """All n points as one batch (or chunks of ``batch_size``), points leaving as they converge,
    give what the per-point loop with torch's Adam gives on each point alone."""
    torch.manual_seed(0)
    shape, classes, n = (1, 4, 4), 5, 12
    k, lr = 0.3, 0.1
    model = PixelModel(create_model("mlp", classes, shape, hidden=[16]), [0.5], [0.25]).eval()
    pool = Split(torch.rand(20, *shape), torch.zeros(20, dtype=torch.int64))
    x0, i, j = _starts_and_targets(model, pool, n, shape, classes, start, target, seed=3)
    reference = _reference_module().ipguard_per_point
    # Cap the iterations where one point meets the margin on its very last step (the final pass
    # only checks the loss), so that others stop earlier and some never converge.
    _, free_iters, free_done = reference(model, x0, i, j, k, lr, 60)
    max_iter = int(sorted(set(free_iters[free_done].tolist()))[-2])
    ref_x, ref_iters, ref_done = reference(model, x0, i, j, k, lr, max_iter)
    assert ref_iters.unique().numel() >= 3 and ref_done.any() and not ref_done.all(), ref_iters.tolist()
    assert ref_done[ref_iters == max_iter].any(), "a point must converge on the last allowed step"
    fp = generate("ipguard", model, pool, shape, classes, n=n, k=k, lr=lr, max_iter=max_iter,
                  start=start, target=target, seed=3, batch_size=batch_size)
    assert fp.iterations is not None and fp.converged is not None
    assert torch.equal(fp.start_labels, i) and torch.equal(fp.targets, j)  # type: ignore[arg-type]
    assert torch.equal(fp.iterations, ref_iters), (fp.iterations.tolist(), ref_iters.tolist())
    assert torch.equal(fp.converged, ref_done)
    # Not bit for bit: torch's Adam orders its arithmetic differently (~1e-5 after 30 steps).
    torch.testing.assert_close(fp.inputs, ref_x, atol=1e-4, rtol=0)
    with torch.no_grad():
        assert torch.equal(fp.labels, model(ref_x).argmax(1))


def test_misclassified_start_begins_at_the_owners_mistakes(in_workspace: Path) -> None:
    """``start: misclassified`` (issue 11): each point starts at a different held-out image the
    owner gets wrong, so n is an upper bound; then the IPGuard loss moves it as from a real start."""
    owner, _ = load_model("models/zoo/owner.safetensors")
    from ipguard.models import predict
    from ipguard.stages.common import load_split

    test = load_split("test")
    wrong = predict(owner, test.x) != test.y
    assert 0 < int(wrong.sum()) < 200
    fp = generate("ipguard", owner, test, (1, 8, 8), 10, n=200, k=1.0, max_iter=0, start="misclassified", seed=1)
    assert len(fp.inputs) == int(wrong.sum())  # every mistake once, no more
    mistakes, truth = test.x[wrong], test.y[wrong]
    where = [next(i for i, m in enumerate(mistakes) if torch.equal(x, m)) for x in fp.inputs]  # max_iter 0: at the starts
    assert sorted(where) == list(range(len(mistakes)))
    assert fp.start_labels is not None and (fp.start_labels != truth[where]).all()  # the owner's wrong labels
    few = generate("ipguard", owner, test, (1, 8, 8), 10, n=3, k=1.0, max_iter=200, start="misclassified", seed=1)
    assert len(few.inputs) == 3 and few.converged is not None and few.converged.all()
    with pytest.raises(ConfigError, match="fingerprint.start: must be one of noise, real, misclassified"):
        generate("ipguard", owner, test, (1, 8, 8), 10, n=3, start="mistakes")
