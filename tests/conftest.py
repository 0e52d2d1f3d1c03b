"""Shared fixtures: a composed config shrunk for tests, and a tiny workspace with every stage run.

As in lightning-hydra-template, the config is composed from ``conf/`` with Hydra and then shrunk
(fewer models, epochs and points), so that tests exercise the real config, not a copy of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["IPGUARD_PROGRESS"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

TINY_ZOO = ("cnn_s1_owner", "mlp_s5_other", "lenet_s2_owner")
TINY_VARIANTS = ("ftll", "rtal", "prune_50", "int8", "float16", "distill_small")
TINY_METHODS = ("ipguard", "pgd", "akh", "sac_label")


def shrink(cfg: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """The default experiment cut down to seconds: 3 negatives, 5 positives, 3 methods, 30 points."""
    cfg["training"]["epochs"] = 8
    cfg["zoo"]["models"] = {k: cfg["zoo"]["models"][k] for k in TINY_ZOO}
    # distill is not in the default suite (time budget); take its entry from its config file.
    extra = yaml.safe_load((ROOT / "conf/postprocess/distill.yaml").read_text())
    cfg["postprocess"] = {k: {**extra, **cfg["postprocess"]}[k] for k in TINY_VARIANTS}
    for key in ("ftll", "rtal", "distill_small"):
        cfg["postprocess"][key]["epochs"] = 3
    cfg["fingerprint"] = {k: cfg["fingerprint"][k] for k in TINY_METHODS}
    for entry in cfg["fingerprint"].values():
        entry["n"] = 30
    cfg["fingerprint"]["ipguard"]["max_iter"] = 200
    cfg["effects"] = {"methods": ["ipguard"], "k": [0.3, 3.0], "n": [10, 20]}
    cfg["evaluate"]["combine"] = ["ipguard", "akh"]
    cfg["experiment"]["name"] = "tiny"
    cfg["tracking"]["uri"] = tracking_uri
    return cfg


@pytest.fixture(scope="session")
def composed() -> dict[str, Any]:
    """The default experiment as DVC composes it."""
    from ipguard.config import compose

    return OmegaConf.to_container(compose(), resolve=True)  # type: ignore[return-value]


@pytest.fixture()
def tiny_params_file(tmp_path: Path, composed: dict[str, Any]) -> Path:
    """A shrunk params.yaml in a fresh folder (the folder is the stage's working directory)."""
    import copy

    cfg = shrink(copy.deepcopy(composed), f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_every_stage(params: Any) -> None:
    """Every stage of the pipeline, in-process and in order, in the current folder."""
    from ipguard.stages.effects import effects
    from ipguard.stages.evaluate import evaluate
    from ipguard.stages.fingerprint import fingerprint
    from ipguard.stages.match import match_all
    from ipguard.stages.postprocess import postprocess
    from ipguard.stages.prepare import prepare
    from ipguard.stages.train import train_model

    prepare(params)
    for name in ("owner", *params.zoo.models):
        train_model(params, name)
    for key in params.postprocess:
        postprocess(params, key)
    for key in params.fingerprint:
        fingerprint(params, key)
    match_all(params)
    evaluate(params)
    effects(params)


def run_tiny(cfg: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch, effects_n: int) -> Any:
    """An experiment's config already cut down by the test: k sweep of one value, tracking off,
    params.yaml written into ``folder``, every stage run there. Returns the params."""
    from ipguard.config import params_from_dict

    cfg["effects"] = {"methods": ["ipguard"], "k": [1.0], "n": [effects_n]}
    # The combined verdict over the sets the test kept (none when fewer than two are left).
    kept = [m for m in cfg["evaluate"].get("combine", []) if m in cfg["fingerprint"]]
    cfg["evaluate"]["combine"] = kept if len(kept) >= 2 else []
    cfg["tracking"]["enabled"] = False
    params = params_from_dict(cfg)
    (folder / "params.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(folder)
    run_every_stage(params)
    return params


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, composed: dict[str, Any]) -> Path:
    """Every stage of the tiny experiment, run in-process once, tracking off; returns the folder."""
    import copy

    from ipguard.config import params_from_dict

    root = tmp_path_factory.mktemp("workspace")
    cfg = shrink(copy.deepcopy(composed), "sqlite:///unused.db")
    cfg["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    params = params_from_dict(cfg)
    old = Path.cwd()
    os.chdir(root)
    try:
        run_every_stage(params)
    finally:
        os.chdir(old)
    return root


@pytest.fixture()
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    return workspace
