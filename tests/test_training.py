"""The training loop's optimizers follow torch's update rules exactly."""

from __future__ import annotations

import pytest
import torch

from ipguard.config import TrainingCfg
from ipguard.errors import ConfigError
from ipguard.models import create_model
from ipguard.training import Optimizer, train


def _step_both(
    ours: torch.nn.Module, opt: Optimizer, ref: torch.nn.Module, ref_opt: torch.optim.Optimizer, x: torch.Tensor,
    steps: int, lr: float,
) -> None:
    """``steps`` steps of our optimizer and torch's on the same batch (random labels, 10 classes)."""
    y = torch.randint(0, 10, (x.shape[0],))
    for _ in range(steps):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step(lr)
        ref_opt.step()


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
    _step_both(ours, opt, ref, ref_opt, torch.rand(32, 1, 8, 8), steps=5, lr=0.01)
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


def test_augmentation_is_seeded_and_keeps_shapes() -> None:
    from ipguard.training import AUGMENT_PAD, augment_batch

    x = torch.rand(64, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Each image is its own crop of the zero-padded image, mirrored or not: every output pixel is
    # either a pixel of that image or a padding zero, and some images are flipped.
    padded = torch.nn.functional.pad(x, (AUGMENT_PAD,) * 4)
    flips = 0
    for i in range(x.shape[0]):
        found = False
        for dy in range(2 * AUGMENT_PAD + 1):
            for dx in range(2 * AUGMENT_PAD + 1):
                crop = padded[i, :, dy : dy + 8, dx : dx + 8]
                if torch.equal(a[i], crop):
                    found = True
                elif torch.equal(a[i], crop.flip(-1)):
                    found, flips = True, flips + 1
                if found:
                    break
            if found:
                break
        assert found, f"image {i} is not a crop of its padded self"
    assert 10 < flips < 54
    assert not torch.equal(a, x)


def test_max_samples_caps_each_epoch_and_augment_changes_the_result() -> None:
    x = torch.rand(200, 3, 8, 8)
    y = torch.randint(0, 10, (200,))
    seen: list[int] = []

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("cnn", 10, (3, 8, 8))

    class Counting(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t.shape[0])
            return self.net(t)

    train(Counting(fresh()), x, y, TrainingCfg(epochs=3, batch_size=32, max_samples=50), seed=0)
    assert sum(seen) == 150 and seen[:2] == [32, 18]
    plain, aug, aug2 = fresh(), fresh(), fresh()
    for m, a in ((plain, False), (aug, True), (aug2, True)):
        train(m, x, y, TrainingCfg(epochs=1, batch_size=32, augment=a), seed=0)
    same = lambda m1, m2: all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))  # noqa: E731
    assert same(aug, aug2) and not same(plain, aug)


def test_lookahead_is_an_average_the_model_ends_at_and_is_seeded() -> None:
    from ipguard.training import Lookahead

    x, y = torch.rand(96, 3, 8, 8), torch.randint(0, 10, (96,))

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("cnn", 10, (3, 8, 8))

    models = [fresh() for _ in range(3)]
    for m, look in zip(models, (False, True, True)):
        train(m, x, y, TrainingCfg(epochs=3, batch_size=16, optimizer="sgd", lr=0.1, schedule="constant",
                                   lookahead=look, lookahead_every=2), seed=0)
    same = lambda m1, m2: all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))  # noqa: E731
    assert same(models[1], models[2]) and not same(models[0], models[1])
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    look = Lookahead(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    look.update(net, 0.75)  # a quarter of the way to the new weights, and the model is reset there
    assert torch.allclose(net.weight, torch.full((1, 2), 0.25))


@pytest.mark.parametrize(
    ("change", "key"),
    [({"momentum": 1.5}, "training.momentum"), ({"weight_decay": -0.1}, "training.weight_decay"),
     ({"max_samples": -1}, "training.max_samples"), ({"augment": 1}, "training.augment"), ({"epochs": -1}, "training.epochs"),
     ({"label_smoothing": 1.0}, "training.label_smoothing"), ({"bias_lr_scale": 0}, "training.bias_lr_scale"),
     ({"augment_padding": "wrap"}, "training.augment_padding"), ({"augment_pad": -2}, "training.augment_pad"),
     ({"onecycle_peak": 1.5}, "training.onecycle_peak"), ({"autocast": "fp8"}, "training.autocast"),
     ({"channels_last": "yes"}, "training.channels_last"), ({"lookahead": 1}, "training.lookahead"),
     ({"lookahead_every": 0}, "training.lookahead_every")],
)
def test_bad_training_settings_are_named(change: dict, key: str) -> None:
    model = create_model("mlp", 2, (1, 2, 2), hidden=[8])
    with pytest.raises(ConfigError, match=key):
        train(model, torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), TrainingCfg(**{"epochs": 1, **change}), seed=0)


def test_sgd_rate_scales_match_torch_param_groups() -> None:
    """A rate multiplier s gives a parameter torch's SGD at lr * s with weight decay wd / s (airbench's
    decoupled BatchNorm shifts): the same shrinkage per step, a larger step."""
    torch.manual_seed(0)
    ours = create_model("airbench", 10, (3, 8, 8), widths=[8, 8])
    # Whitened as training does: without it a channel of zeros meets BatchNorm's eps of 1e-12, the
    # gradients reach 1e13 and both optimizers end in NaN (on some CPUs), which compares nothing.
    ours.init_from_data(torch.rand(64, 3, 8, 8))
    ref = create_model("airbench", 10, (3, 8, 8), widths=[8, 8])
    ref.load_state_dict(ours.state_dict())
    from ipguard.training import bias_scales

    cfg = TrainingCfg(optimizer="sgd", lr=0.05, weight_decay=1e-3, momentum=0.85)
    params = list(ours.parameters())
    scales = bias_scales(ours, params, 64.0)
    assert scales.count(64.0) == 4 and len(set(scales)) == 2  # the shifts of the four BatchNorms
    opt = Optimizer(params, cfg, scales)
    ref_params = list(ref.parameters())
    groups = [{"params": [p for p, s in zip(ref_params, scales) if s == v], "lr": 0.05 * v, "weight_decay": 1e-3 / v}
              for v in (1.0, 64.0)]
    ref_opt = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
    _step_both(ours, opt, ref, ref_opt, torch.rand(32, 3, 8, 8), steps=4, lr=0.05)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert bool(torch.isfinite(a).all()) and torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_onecycle_schedule_has_airbench_shape() -> None:
    from ipguard.training import lr_factor

    cfg = TrainingCfg(schedule="onecycle", onecycle_start=0.2, onecycle_peak=0.25, onecycle_end=0.05)
    f = [lr_factor("onecycle", s, 100, cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.2) and f[25] == pytest.approx(1.0) and f[100] == pytest.approx(0.05)
    assert all(a < b for a, b in zip(f[:25], f[1:26])) and all(a > b for a, b in zip(f[25:100], f[26:101]))


def test_airbench_whitens_its_input_and_averages_over_mirror_images() -> None:
    from ipguard.models import PixelModel, init_from_data

    torch.manual_seed(0)
    # Correlated "images": smooth noise, so that whitening has something to undo.
    x = torch.nn.functional.avg_pool2d(torch.rand(200, 3, 18, 18), 3, 1)
    model = PixelModel(create_model("airbench", 10, (3, 16, 16), widths=[8, 16]), [0.5] * 3, [0.25] * 3)
    init_from_data(model, x)
    net = model.net
    z = torch.nn.functional.conv2d((x - model.mean) / model.std, net.whiten_weight[: net.whiten_width // 2])
    feats = z.permute(0, 2, 3, 1).reshape(-1, net.whiten_width // 2)
    cov = feats.T @ feats / feats.shape[0]
    # Unit variance and no correlation along every whitened direction (up to the eps of 5e-4).
    assert torch.allclose(cov, torch.eye(cov.shape[0]), atol=0.05)
    assert torch.equal(net.whiten_weight[net.whiten_width // 2 :], -net.whiten_weight[: net.whiten_width // 2])
    assert "whiten_weight" in net.state_dict() and all(p is not net.whiten_weight for p in net.parameters())
    model.eval()
    q = torch.rand(4, 3, 16, 16)
    assert torch.allclose(model(q), model(q.flip(-1)), atol=1e-5)  # flip TTA: symmetric by construction
    net.flip_tta = False
    assert not torch.allclose(model(q), model(q.flip(-1)), atol=1e-5)


def test_fast_recipe_trains_in_channels_last_and_stores_contiguous(tmp_path) -> None:
    """The fast recipe (conf/training/fast.yaml) on tiny data: it learns, the weights come back in the
    usual layout, and a run is repeatable on the CPU."""
    from omegaconf import OmegaConf

    from ipguard.config import merge_into
    from ipguard.io import load_model_file, save_model_file
    from ipguard.models import PixelModel, init_from_data, model_meta, model_tensors

    recipe = OmegaConf.to_container(OmegaConf.load("conf/training/fast.yaml"))
    cfg = merge_into(TrainingCfg(), {**recipe, "epochs": 6, "batch_size": 32}, "training")
    assert cfg.channels_last and cfg.schedule == "onecycle" and cfg.augment_padding == "reflect"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).long()  # red against blue: learnable from colour

    def run() -> tuple[PixelModel, list[float]]:
        torch.manual_seed(0)
        model = PixelModel(create_model("airbench", 2, (3, 12, 12), widths=[8, 16]), [0.5] * 3, [0.25] * 3)
        init_from_data(model, x)
        return model, train(model, x, y, cfg, seed=0)

    model, history = run()
    again, history2 = run()
    assert history == history2 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert history[-1] < history[0]
    assert all(t.is_contiguous() for t in model_tensors(model).values())
    path = tmp_path / "m.safetensors"
    save_model_file(path, model_tensors(model), model_meta(model, "airbench", {"widths": [8, 16]}, 2, (3, 12, 12)))
    tensors, _ = load_model_file(path)
    assert torch.equal(tensors["whiten_weight"], model.net.whiten_weight)
