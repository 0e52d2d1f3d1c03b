"""The training loop's optimizers follow torch's update rules exactly."""

from __future__ import annotations

import pytest
import torch

from ipguard.config import TrainingCfg
from ipguard.errors import ConfigError
from ipguard.models import create_model
from ipguard.training import Optimizer, train


@pytest.mark.parametrize(("kind", "wd"), [("adam", 0.0), ("adam", 1e-3), ("sgd", 0.0), ("sgd", 5e-4)])
def test_optimizer_matches_torch(kind: str, wd: float) -> None:
    torch.manual_seed(0)
    ours = create_model("cnn", 10, (1, 8, 8))
    ref = create_model("cnn", 10, (1, 8, 8))
    ref.load_state_dict(ours.state_dict())
    cfg = TrainingCfg(optimizer=kind, lr=0.01, weight_decay=wd, momentum=0.9)
    opt = Optimizer(ours.parameters(), cfg)
    if kind == "adam":
        ref_opt: torch.optim.Optimizer = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=wd)
    else:
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=wd)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(5):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step(0.01)
        ref_opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_training_learns_and_rejects_bad_settings() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", 2, (1, 2, 2), hidden=[8])
    x = torch.rand(64, 1, 2, 2)
    y = (x.flatten(1).sum(1) > 2).long()
    history = train(model, x, y, TrainingCfg(epochs=30, lr=0.05, batch_size=16), seed=0)
    assert history[-1] < history[0] * 0.5
    with pytest.raises(ConfigError, match="training.optimizer"):
        train(model, x, y, TrainingCfg(epochs=1, optimizer="lbfgs"), seed=0)
    with pytest.raises(ConfigError, match="training.schedule"):
        train(model, x, y, TrainingCfg(epochs=1, schedule="step"), seed=0)


def test_progress_is_quiet_in_ci_and_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipguard import progress

    monkeypatch.delenv("IPGUARD_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert not progress.progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True)
    assert progress.progress_enabled()
    monkeypatch.setenv("IPGUARD_PROGRESS", "0")
    assert not progress.progress_enabled()
