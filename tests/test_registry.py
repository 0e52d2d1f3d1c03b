"""The one registry behind datasets, architectures, post-processors and fingerprint methods."""

from __future__ import annotations

import pytest

from ipguard.data import DATASETS
from ipguard.errors import ConfigError
from ipguard.fingerprint import METHODS
from ipguard.models import ARCHS
from ipguard.postprocess import POSTPROCESS
from ipguard.registry import Registry


def _registry() -> Registry:
    reg: Registry = Registry("widget", leading=("model", "data"))

    @reg.register("spin")
    def spin(model: object, data: object, speed: float, turns: int = 1) -> float:
        return speed * turns

    return reg


def test_entries_are_found_and_their_config_keys_checked() -> None:
    reg = _registry()
    assert reg.names() == ["spin"] and "spin" in reg and list(reg) == ["spin"]
    fn = reg.check("spin", {"speed": 2.0, "turns": 3}, "widgets.a")
    assert fn(None, None, speed=2.0, turns=3) == 6.0
    with pytest.raises(ConfigError, match=r"widgets\.a\.method: unknown widget 'spun' \(known: spin\)"):
        reg.check("spun", {}, "widgets.a")
    with pytest.raises(ConfigError, match=r"unknown config key 'widgets\.a\.speeed' \(allowed: speed, turns\)"):
        reg.check("spin", {"speeed": 2.0}, "widgets.a")
    with pytest.raises(ConfigError, match=r"missing config key 'widgets\.a\.speed'"):
        reg.check("spin", {}, "widgets.a")


def test_a_name_registers_once_and_entries_take_the_leading_parameters() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="'spin' is already registered"):
        reg.register("spin")(lambda model, data: None)
    with pytest.raises(ValueError, match=r"must take \(model, data\) first, takes \(data, model\)"):
        reg.register("flip")(lambda data, model: None)
    assert "flip" not in reg


def test_every_kind_of_part_lives_in_a_registry() -> None:
    assert {"digits", "cifar10", "cifar100", "imagenet"} <= set(DATASETS.names())
    assert {"mlp", "cnn", "cifar_resnet20", "airbench"} <= set(ARCHS.names())
    assert {"ftll", "ftal", "rtll", "rtal", "prune", "quantize_int8", "distill", "extract"} <= set(POSTPROCESS.names())
    assert {"ipguard", "random_noise", "fgsm", "pgd", "cw", "akh"} <= set(METHODS.names())
    with pytest.raises(ConfigError, match=r"zoo\.models\.x\.arch: unknown architecture 'resnet9000' .*or timm/<name>"):
        from ipguard.models import create_model

        create_model("resnet9000", 10, (3, 32, 32), where="zoo.models.x.arch")
