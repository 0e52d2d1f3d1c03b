"""Config: params.yaml stays in step with conf/, and bad keys are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ipguard.config import compose_yaml, load_params, params_from_dict
from ipguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_what_conf_composes() -> None:
    """`dvc repro` does not compose, so the committed params.yaml must equal the composition."""
    committed = (ROOT / "params.yaml").read_text()
    assert committed == compose_yaml(), "params.yaml has drifted from conf/: run `make params`"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    params = params_from_dict(yaml.safe_load(compose_yaml([f"experiment={experiment}"])))
    assert params.experiment.name == experiment


def test_default_experiment_meets_the_zoo_brief(composed: dict) -> None:
    params = params_from_dict(composed)
    archs = {m.arch for m in params.zoo.models.values()}
    assert len(params.zoo.models) >= 20 and len(archs) >= 3
    assert {m.data for m in params.zoo.models.values()} == {"owner", "other"}
    methods = {v["method"] for v in params.postprocess.values()}
    assert {"ftll", "ftal", "rtll", "rtal", "prune", "quantize_int8", "float16"} <= methods
    amounts = sorted(v["amount"] for v in params.postprocess.values() if v["method"] == "prune")
    assert amounts[0] == pytest.approx(0.1) and amounts[-1] == pytest.approx(0.9)


def test_unknown_top_level_key_is_named(composed: dict) -> None:
    bad = dict(composed, trainin={"epochs": 1})
    with pytest.raises(ConfigError, match="trainin"):
        params_from_dict(bad)


def test_unknown_nested_key_is_named(composed: dict) -> None:
    bad = {**composed, "training": {**composed["training"], "epoch": 3}}
    with pytest.raises(ConfigError, match="training.epoch"):
        params_from_dict(bad)


def test_wrong_type_is_named(composed: dict) -> None:
    bad = {**composed, "training": {**composed["training"], "epochs": "many"}}
    with pytest.raises(ConfigError, match="training.epochs"):
        params_from_dict(bad)


def test_unknown_model_override_key_is_named(composed: dict) -> None:
    params = params_from_dict(composed)
    name = next(iter(params.zoo.models))
    params.zoo.models[name].train = {"epochz": 2}
    with pytest.raises(ConfigError, match=rf"zoo.models.{name}.train.*epochz"):
        params.training_for(name)


def test_stage_rejects_unknown_registry_key_with_exit_2(tiny_params_file: Path) -> None:
    """A key that the post-processor does not take stops the stage: status 2, the key named."""
    cfg = yaml.safe_load(tiny_params_file.read_text())
    cfg["postprocess"]["ftll"]["learning_rate"] = 0.1
    tiny_params_file.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "ipguard.stages.postprocess", "ftll", "--params", str(tiny_params_file)],
        cwd=tiny_params_file.parent, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "postprocess.ftll.learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_rejects_unknown_params_key_with_exit_2(tiny_params_file: Path) -> None:
    cfg = yaml.safe_load(tiny_params_file.read_text())
    cfg["dataset"]["colour"] = "red"
    tiny_params_file.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "ipguard.stages.prepare", "--params", str(tiny_params_file)],
        cwd=tiny_params_file.parent, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "dataset.colour" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tiny_params_file.parent / "data").exists(), "nothing may be written on bad config"


def test_load_params_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_experiment_overlays_override_the_primary_config(tmp_path: Path) -> None:
    """An overlay's value beats conf/config.yaml's own (Hydra's `_self_` comes first)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "stricter.yaml").write_text(
        "# @package _global_\nexperiment:\n  name: stricter\nevaluate:\n  level: 0.001\n"
    )
    data = yaml.safe_load(compose_yaml(["experiment=stricter"], config_dir=conf))
    assert data["evaluate"]["level"] == 0.001 and data["experiment"]["name"] == "stricter"


@pytest.mark.parametrize("group_file", sorted(p.name for p in (ROOT / "conf" / "postprocess").glob("*.yaml")))
def test_every_postprocess_entry_names_a_registered_method_with_keys_it_takes(group_file: str) -> None:
    from ipguard.postprocess import RESERVED_KEYS, check_postprocess

    entries = yaml.safe_load((ROOT / "conf" / "postprocess" / group_file).read_text())
    assert entries, group_file
    for key, entry in entries.items():
        kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
        check_postprocess(entry["method"], kwargs, f"{group_file}:{key}")
