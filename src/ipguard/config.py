"""The typed shape of ``params.yaml`` and the Hydra composition that produces it.

``conf/`` holds the Hydra groups; DVC's Hydra integration (and ``make params``) composes them
into ``params.yaml``, which stage modules read through :func:`load_params`. The dataclasses below
are the schema: a key that is not in them stops the run with a :class:`ConfigError` naming it.
Entries whose keys depend on a registry (post-processing variants, fingerprint methods, model
architectures) are checked against the registered function's parameters instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ipguard.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ExperimentCfg:
    name: str = "digits"
    description: str = ""
    budget: str = ""


@dataclass
class NormalizationCfg:
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class DatasetCfg:
    name: str = "digits"
    root: str | None = None
    num_classes: int = 10
    input_shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    normalization: NormalizationCfg = field(default_factory=NormalizationCfg)
    test_fraction: float = 0.2
    other_fraction: float = 0.5
    seed: int = 0
    storage: str = "float32"


@dataclass
class TrainingCfg:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    max_samples: int = 0        # > 0: each epoch draws this many examples (a fresh seeded draw per epoch)
    augment: bool = False       # random translation (a crop of the padded image) and horizontal flip, seeded
    augment_pad: int = 4        # how far augment translates, in pixels
    augment_padding: str = "zeros"  # zeros (torchvision's RandomCrop) | reflect (airbench)
    label_smoothing: float = 0.0
    # onecycle: the rate factor rises linearly from onecycle_start to 1 over the first
    # onecycle_peak of the steps, then falls linearly to onecycle_end (airbench: 0.2, 0.23, 0.07).
    onecycle_start: float = 0.2
    onecycle_peak: float = 0.23
    onecycle_end: float = 0.07
    bias_lr_scale: float = 1.0  # rate multiplier of BatchNorm shifts (airbench: 64); their decay per step is kept
    channels_last: bool = False  # NHWC activations: faster convolutions on CPUs (oneDNN) and tensor cores
    # none | bf16: mixed-precision training (convolutions and matrix products in bfloat16, the
    # weights in float32), on CUDA and on the CPU (about 2x faster where the CPU has AVX512-BF16
    # or AMX, much slower where it has neither). Models are stored and evaluated in float32.
    autocast: str = "none"
    # Lookahead (airbench94's): every lookahead_every steps the weights (and BatchNorm statistics)
    # are pulled towards an exponential average of themselves, whose decay grows with progress
    # (0.95 ** every x progress ** 3), and the average is the final model.
    lookahead: bool = False
    lookahead_every: int = 5


@dataclass
class ModelCfg:
    """One model of the zoo (or the owner): how to make it and what it was trained on."""

    arch: str = "cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "train"       # train | file | package
    path: str | None = None     # file: the weights; package: the weights' path inside the package
    package: str | None = None  # package: an installed Python package that ships the weights
    key_map: str = "names"      # imported weights: match tensors by "names", or by "order" (same shapes in turn)
    data: str = "owner"
    seed: int = 0
    family: str | None = None
    normalization: NormalizationCfg | None = None
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class ZooCfg:
    models: dict[str, ModelCfg] = field(default_factory=dict)


@dataclass
class SplitCfg:
    """How the suspects are cut into a dev part (settings are chosen there) and a test part (reported)."""

    dev_fraction: float = 0.5
    seed: int = 0


@dataclass
class BootstrapCfg:
    """Percentile bootstrap intervals of ARUC, AUC and the TPR (positives and negatives resampled apart)."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class TargetCfg:
    """A quality target: the AUC (test part) that each of ``families`` must reach."""

    name: str = ""
    auc: float = 1.0
    families: list[str] = field(default_factory=list)


@dataclass
class EvaluateCfg:
    max_fpr: float = 0.01
    level: float = 0.01
    batch_size: int = 512
    split: SplitCfg = field(default_factory=SplitCfg)
    bootstrap: BootstrapCfg = field(default_factory=BootstrapCfg)
    combine: list[str] = field(default_factory=list)  # fingerprint entries given one combined verdict; []: none
    target: list[TargetCfg] = field(default_factory=list)  # the report says which targets are met, and by how much not
    target_exclude: list[str] = field(default_factory=list)  # copies no target covers (by name)


@dataclass
class EffectsCfg:
    methods: list[str] = field(default_factory=list)  # empty: every fingerprint entry of method ipguard
    k: list[float] = field(default_factory=lambda: [0.0, 0.3, 1.0, 3.0, 10.0])
    n: list[int] = field(default_factory=lambda: [10, 25, 50, 100])


@dataclass
class TrackingCfg:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment_prefix: str = "ipguard"


@dataclass
class RuntimeCfg:
    device: str = "cpu"
    threads: int = 0
    deterministic: bool = True


@dataclass
class Params:
    experiment: ExperimentCfg = field(default_factory=ExperimentCfg)
    dataset: DatasetCfg = field(default_factory=DatasetCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    training: TrainingCfg = field(default_factory=TrainingCfg)
    zoo: ZooCfg = field(default_factory=ZooCfg)
    postprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprint: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    effects: EffectsCfg = field(default_factory=EffectsCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)

    OWNER = "owner"

    def model_spec(self, name: str) -> ModelCfg:
        """The spec of the owner (``owner``) or of a zoo model, by name."""
        if name == self.OWNER:
            return self.model
        if name not in self.zoo.models:
            raise ConfigError(f"zoo.models: no model named '{name}'")
        return self.zoo.models[name]

    def training_for(self, name: str) -> TrainingCfg:
        """The shared ``training`` settings with the model's own ``train`` overrides applied."""
        spec = self.model_spec(name)
        where = "model.train" if name == self.OWNER else f"zoo.models.{name}.train"
        return merge_into(self.training, spec.train, where)


def merge_into(base: Any, overrides: Mapping[str, Any], where: str) -> Any:
    """A copy of the dataclass ``base`` with ``overrides`` applied, unknown keys rejected."""
    merged = OmegaConf.structured(base)
    try:
        merged.merge_with(OmegaConf.create(dict(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from exc
    return OmegaConf.to_object(merged)


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    if "not in" in message and key:
        return f"unknown config key '{key}'"
    return f"{message} (key '{key}')" if key else message


def params_from_dict(data: Mapping[str, Any], source: str = "params") -> Params:
    """Validate a plain mapping against the schema; a bad key raises :class:`ConfigError`."""
    schema = OmegaConf.structured(Params)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(data)))
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc
    assert isinstance(params, Params)
    if Params.OWNER in params.zoo.models:
        raise ConfigError(f"{source}: zoo.models may not hold a model named '{Params.OWNER}' (that is `model`)")
    for section in ("postprocess", "fingerprint"):
        for key, entry in getattr(params, section).items():
            if "method" not in entry:
                raise ConfigError(f"{source}: {section}.{key} lacks the key 'method'")
    return params


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader that, like OmegaConf, also reads ``1e-3`` (no dot) as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+][0-9]+)?"""
               r"""|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"""),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the project's root, or `make params`)")
    try:
        text = path.read_text()
        # A composed params.yaml is plain YAML: parsed directly it takes milliseconds, where
        # OmegaConf's node tree takes ~0.6 s (once per stage and per sweep job). Interpolations
        # (`${...}`) in a hand-written file still go through OmegaConf.
        if "${" in text:
            data = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
        else:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params_from_dict(data, str(path))


def to_dict(obj: Any) -> Any:
    """A dataclass config (or a part of one) as plain containers, for logging and metadata."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def compose(overrides: list[str] | None = None, config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/`` with Hydra exactly as DVC's Hydra integration does before a run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(config_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg


def compose_yaml(overrides: list[str] | None = None, config_dir: Path = CONF_DIR) -> str:
    """``params.yaml``'s text for the given overrides (byte for byte what DVC writes)."""
    return OmegaConf.to_yaml(compose(overrides, config_dir))


def main(argv: list[str] | None = None) -> int:
    """``python -m ipguard.config compose [OVERRIDE ...]`` prints the composed params."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "compose":
        print("usage: python -m ipguard.config compose [OVERRIDE ...]", file=sys.stderr)
        return 2
    text = compose_yaml(argv[1:])
    params_from_dict(OmegaConf.to_container(OmegaConf.create(text)), "composed config")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
