"""Post-processors do what their names say, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipguard.errors import ConfigError
from ipguard.io import load_model_file, save_model_file
from ipguard.models import accuracy, build_model, load_model, model_meta, model_tensors
from ipguard.postprocess import apply_postprocess, prunable
from ipguard.stages.common import load_split


def _owner() -> torch.nn.Module:
    return load_model("models/zoo/owner.safetensors")[0]


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> set[str]:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return {k for k in sa if not torch.equal(sa[k].float(), sb[k].float())}


@pytest.mark.parametrize(("method", "only_head"), [("ftll", True), ("rtll", True), ("ftal", False), ("rtal", False)])
def test_finetuning_touches_the_right_layers(in_workspace: Path, method: str, only_head: bool) -> None:
    owner = _owner()
    before = {k: v.clone() for k, v in owner.net.state_dict().items()}
    variant = apply_postprocess(method, owner, load_split("owner"), seed=0, epochs=2, lr=1e-3)
    changed = _changed(owner, variant)
    head = {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(before[k], v) for k, v in owner.net.state_dict().items()), "the input model must not change"
    if only_head:
        assert changed == head
    else:
        assert head <= changed and len(changed) > len(head)


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.9])
def test_pruning_removes_the_asked_share(in_workspace: Path, amount: float) -> None:
    owner = _owner()
    weights = prunable(owner.net)
    total = sum(w.numel() for w in weights)
    zeros_before = sum(int((w == 0).sum()) for w in weights)
    pruned = apply_postprocess("prune", owner, load_split("owner"), seed=0, amount=amount)
    zeros = sum(int((w == 0).sum()) for w in prunable(pruned.net))
    assert zeros_before == 0
    assert zeros == round(amount * total)
    # The survivors are the largest weights, and biases are untouched.
    kept = torch.cat([w.flatten() for w in prunable(pruned.net)])
    orig = torch.cat([w.flatten() for w in weights])
    assert orig[kept == 0].abs().max() <= orig[kept != 0].abs().min()
    for name, p in pruned.net.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, dict(owner.net.named_parameters())[name])


def test_layerwise_pruning_prunes_each_layer(in_workspace: Path) -> None:
    pruned = apply_postprocess("prune", _owner(), load_split("owner"), seed=0, amount=0.5, scope="layer")
    for w in prunable(pruned.net):
        assert int((w == 0).sum()) == round(0.5 * w.numel())


def test_int8_quantization_runs_and_keeps_accuracy(in_workspace: Path, tmp_path: Path) -> None:
    owner, meta = load_model("models/zoo/owner.safetensors")
    test = load_split("test")
    q = apply_postprocess("quantize_int8", owner, load_split("owner"), seed=0)
    assert q.storage == "int8"
    acc_owner, acc_q = accuracy(owner, test.x, test.y), accuracy(q, test.x, test.y)
    assert abs(acc_owner - acc_q) <= 0.03
    # Stored as int8 on disk, and what loads back predicts exactly as the model in memory.
    path = tmp_path / "int8.safetensors"
    qmeta = dict(meta, storage="int8")
    qmeta.pop("sha256")
    save_model_file(path, model_tensors(q), qmeta)
    tensors, _ = load_model_file(path)
    assert tensors["classifier.weight"].dtype == torch.int8
    loaded, _ = load_model(str(path))
    assert torch.equal(loaded(test.x).argmax(1), build_model(qmeta, model_tensors(q))(test.x).argmax(1))
    assert abs(accuracy(loaded, test.x, test.y) - acc_q) <= 0.003


def test_float16_computes_in_half_precision(in_workspace: Path) -> None:
    owner = _owner()
    test = load_split("test")
    half = apply_postprocess("float16", owner, load_split("owner"), seed=0)
    assert all(p.dtype == torch.float16 for p in half.net.parameters())
    out = half(test.x[:4])
    assert out.dtype == torch.float32
    assert abs(accuracy(owner, test.x, test.y) - accuracy(half, test.x, test.y)) <= 0.03


@pytest.mark.parametrize("compute", ["half", "float32"])
def test_bfloat16_rounds_the_weights_and_survives_the_file(in_workspace: Path, tmp_path: Path, compute: str) -> None:
    owner, meta = load_model("models/zoo/owner.safetensors")
    test = load_split("test")
    q = apply_postprocess("bfloat16", owner, load_split("owner"), seed=0, compute=compute)
    want = torch.bfloat16 if compute == "half" else torch.float32
    assert all(p.dtype == want for p in q.net.parameters())
    weights = [(a, b) for a, b in zip(owner.net.parameters(), q.net.parameters())]
    # Rounded to an 8-bit significand: changed, by at most half a unit in the last place (2^-8 relative).
    assert any(not torch.equal(a, b.float()) for a, b in weights)
    assert all(bool(((a - b.float()).abs() <= a.abs() * 2**-8 + 1e-30).all()) for a, b in weights)
    assert abs(accuracy(owner, test.x, test.y) - accuracy(q, test.x, test.y)) <= 0.03
    qmeta = model_meta(q, meta["arch"], meta["arch_kwargs"], meta["num_classes"], meta["input_shape"], role="positive")
    assert qmeta["storage"] == "bfloat16" and ("compute" in qmeta) == (compute == "float32")
    path = tmp_path / "bf16.safetensors"
    save_model_file(path, model_tensors(q), qmeta)
    tensors, _ = load_model_file(path)
    assert tensors["classifier.weight"].dtype == torch.bfloat16
    loaded, _ = load_model(str(path))
    assert all(p.dtype == want for p in loaded.net.parameters())
    assert torch.equal(loaded(test.x), q(test.x))


def test_unknown_postprocess_is_named(in_workspace: Path) -> None:
    with pytest.raises(ConfigError, match="unknown post-processing 'shrink'"):
        apply_postprocess("shrink", _owner(), load_split("owner"), seed=0)
    with pytest.raises(ConfigError, match="prune.amount"):
        apply_postprocess("prune", _owner(), load_split("owner"), seed=0, amount=1.5)


@pytest.mark.parametrize(("method", "kwargs"), [("distill", {}), ("distill", {"student_arch": "mlp", "student_kwargs": {"hidden": [32]}}), ("extract", {})])
def test_students_learn_the_owner_without_its_weights(in_workspace: Path, method: str, kwargs: dict) -> None:
    owner, meta = load_model("models/zoo/owner.safetensors")
    student = apply_postprocess(method, owner, load_split("other"), seed=0, epochs=10, **kwargs)
    test = load_split("test")
    agreement = float((student(test.x).argmax(1) == owner(test.x).argmax(1)).float().mean())
    # Chance is 0.1; a small student after 10 short epochs is weaker than one of the owner's size.
    assert agreement > (0.8 if "student_arch" not in kwargs else 0.5)
    assert student.arch == kwargs.get("student_arch", meta["arch"])
    assert student.input_shape == tuple(meta["input_shape"]) and student.num_classes == meta["num_classes"]
    if "student_arch" not in kwargs:
        assert _changed(owner, student), "a student is trained from scratch, not copied"


@pytest.mark.parametrize("amount", [0.3, 0.7])
def test_prune_finetune_keeps_pruned_weights_at_zero(in_workspace: Path, amount: float) -> None:
    owner = _owner()
    total = sum(w.numel() for w in prunable(owner.net))
    pruned = apply_postprocess("prune", owner, load_split("owner"), seed=0, amount=amount)
    # Weight decay and SGD momentum would move a zero weight if the mask were not re-applied.
    tuned = apply_postprocess("prune_finetune", owner, load_split("other"), seed=0, amount=amount, epochs=2, lr=0.01,
                              optimizer="sgd", weight_decay=5e-4, augment=True, max_samples=200, schedule="cosine")
    before = torch.cat([w.flatten() for w in prunable(pruned.net)])
    after = torch.cat([w.flatten() for w in prunable(tuned.net)])
    assert int((after == 0).sum()) == round(amount * total)
    assert torch.equal(before == 0, after == 0), "the pruned weights are exactly those held at zero"
    assert not torch.equal(before, after), "the surviving weights were fine-tuned"


def test_finetuning_with_thief_settings_is_seeded(in_workspace: Path) -> None:
    owner, data = _owner(), load_split("other")
    kwargs = dict(epochs=2, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  max_samples=100, augment=True)
    a = apply_postprocess("ftal", owner, data, seed=3, **kwargs)
    b = apply_postprocess("ftal", owner, data, seed=3, **kwargs)
    c = apply_postprocess("ftal", owner, data, seed=4, **kwargs)
    assert not _changed(a, b)
    assert _changed(a, c)


@pytest.mark.parametrize(
    ("method", "kwargs", "key"),
    [("ftal", {"optimizer": "rmsprop"}, "ftal.optimizer"), ("rtal", {"schedule": "step"}, "rtal.schedule"),
     ("ftll", {"momentum": 1.0}, "ftll.momentum"), ("ftal", {"weight_decay": -1.0}, "ftal.weight_decay"),
     ("rtll", {"max_samples": -5}, "rtll.max_samples"), ("ftal", {"augment": "yes"}, "ftal.augment"),
     ("ftal", {"lr": 0.0}, "ftal.lr"), ("prune_finetune", {"amount": 1.0}, "prune_finetune.amount"),
     ("prune_finetune", {"scope": "row"}, "prune_finetune.scope"), ("prune_finetune", {"epochs": -1}, "prune_finetune.epochs"),
     ("prune_finetune", {"shuffle": True}, "prune_finetune.shuffle")],
)
def test_finetuning_settings_are_checked_up_front(in_workspace: Path, method: str, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_postprocess(method, _owner(), load_split("other"), seed=0, where=method, **kwargs)


def test_pgd_stays_in_its_ball_and_raises_the_loss() -> None:
    from ipguard.postprocess import pgd_perturb

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    adv = pgd_perturb(net, x, y, eps=0.05, step=0.02, steps=5, gen=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(net(adv), y) > loss(net(x), y)
    assert not adv.requires_grad and net.training


def test_adversarial_extraction_learns_the_owner_and_checks_its_keys(in_workspace: Path) -> None:
    owner, _ = load_model("models/zoo/owner.safetensors")
    other = load_split("other")
    student = apply_postprocess("extract_adv", owner, other, seed=0, epochs=10, eps=0.03, step=0.01, steps=2)
    test = load_split("test")
    agreement = float((student(test.x).argmax(1) == owner(test.x).argmax(1)).float().mean())
    assert agreement > 0.6  # adversarial training costs accuracy; chance is 0.1
    with pytest.raises(ConfigError, match="extract_adv.steps"):
        apply_postprocess("extract_adv", owner, other, seed=0, steps=0)
    with pytest.raises(ConfigError, match="extract_adv.label_smoothing"):
        apply_postprocess("extract_adv", owner, other, seed=0, training={"label_smoothing": 2.0})
    with pytest.raises(ConfigError, match="extract_adv.attack_labels"):
        apply_postprocess("extract_adv", owner, other, seed=0, attack_labels="true")
    with pytest.raises(ConfigError, match="extract_adv.adversarial_fraction"):
        apply_postprocess("extract_adv", owner, other, seed=0, adversarial_fraction=0.0)


def test_adversarial_batch_attacks_the_models_own_labels_and_keeps_the_clean_part() -> None:
    from ipguard.postprocess import adversarial_batch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).train()
    x = torch.rand(8, 3, 2, 2)
    predicted = net(x).argmax(1)
    other = (predicted + 1) % 3  # labels the model does not give: attacking them lowers their loss
    loss = torch.nn.functional.cross_entropy
    kw = dict(eps=0.05, step=0.02, steps=5)
    adv = adversarial_batch(net, x, other, gen=torch.Generator().manual_seed(0), attack_labels="predicted", fraction=0.5, **kw)
    assert torch.equal(adv[4:], x[4:])  # the second half stays clean
    assert float((adv[:4] - x[:4]).abs().max()) <= 0.05 + 1e-6 and adv[:4].ne(x[:4]).any()
    assert loss(net(adv[:4]), predicted[:4]) > loss(net(x[:4]), predicted[:4])  # pushed off its own labels
    given = adversarial_batch(net, x, other, gen=torch.Generator().manual_seed(0), attack_labels="owner", **kw)
    assert loss(net(given), other) > loss(net(x), other)  # pushed off the labels it was given
    assert net.training and not adv.requires_grad


def test_student_recipe_comes_from_training_and_explicit_keys_win() -> None:
    from ipguard.postprocess import student_cfg

    recipe = {"epochs": 8, "lr": 0.75, "optimizer": "sgd", "schedule": "onecycle", "bias_lr_scale": 64.0}
    cfg = student_cfg("distill", recipe, {"bias_lr_scale": 1.0, "lr": 0.4}, epochs=12, lr=None)
    assert (cfg.epochs, cfg.lr, cfg.optimizer, cfg.schedule, cfg.batch_size, cfg.bias_lr_scale) == (12, 0.4, "sgd", "onecycle", 64, 1.0)
    with pytest.raises(ConfigError, match="distill.training"):
        student_cfg("distill", {"epochz": 3})
    with pytest.raises(ConfigError, match="distill.train"):
        student_cfg("distill", None, {"label_smoothing": "much"})


def test_a_thiefs_budget_is_a_seeded_subset_of_its_images() -> None:
    from ipguard.postprocess import thief_images

    x = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1)
    a, b = thief_images(x, 20, seed=3, where="extract"), thief_images(x, 20, seed=3, where="extract")
    assert torch.equal(a, b) and a.shape[0] == 20 and a.flatten().unique().numel() == 20
    assert not torch.equal(a, thief_images(x, 20, seed=4, where="extract"))
    assert thief_images(x, None, seed=3, where="extract") is x
    for bad in (0, 51, 2.5, True):
        with pytest.raises(ConfigError, match=r"distill\.queries"):
            thief_images(x, bad, seed=0, where="distill")  # type: ignore[arg-type]


def test_a_student_with_a_budget_learns_from_that_many_queries_only(in_workspace: Path) -> None:
    owner, _ = load_model("models/zoo/owner.safetensors")
    other = load_split("other")
    calls: list[int] = []
    forward = owner.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return forward(x)

    owner.forward = counting  # type: ignore[method-assign]
    apply_postprocess("extract", owner, other, seed=0, epochs=1, queries=7)
    assert sum(calls) == 7  # the owner answered the thief's 7 images, nothing more
    with pytest.raises(ConfigError, match="extract.queries"):
        apply_postprocess("extract", owner, other, seed=0, queries=other.x.shape[0] + 1)
