"""Stage ``postprocess``: one post-processed copy of the owner (a positive suspect).

Reads the variant's own entry ``postprocess.<key>`` and ``dataset``.
"""

from __future__ import annotations

from ipguard.config import Params
from ipguard.errors import ConfigError
from ipguard.io import save_model_file
from ipguard.models import accuracy, build_model, model_meta, model_tensors
from ipguard.postprocess import RESERVED_KEYS, apply_postprocess, check_postprocess
from ipguard.stages.common import load_split, load_zoo_model, run_stage, variant_path
from ipguard.tracking import stage_run


def postprocess(params: Params, key: str | None) -> None:
    assert key is not None
    if key not in params.postprocess:
        raise ConfigError(f"postprocess: no variant named '{key}'")
    entry = dict(params.postprocess[key])
    method = entry["method"]
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    check_postprocess(method, kwargs, f"postprocess.{key}")
    owner, owner_meta = load_zoo_model(Params.OWNER, params.runtime.device)
    data = load_split(entry.get("data", "owner"))
    seed = int(entry.get("seed", 0))
    variant = apply_postprocess(method, owner, data, seed, where=f"postprocess.{key}", **kwargs)
    args = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    meta = model_meta(
        variant, variant.arch or owner_meta["arch"], variant.arch_kwargs, owner_meta["num_classes"], owner_meta["input_shape"],
        name=key, role="positive", family=entry.get("family", method),
        lineage=f"{owner_meta['lineage']} > {method}({args})", parent_sha256=owner_meta["sha256"],
        dataset=owner_meta["dataset"], params={"postprocess": entry},
    )
    test = load_split("test")
    stored = build_model(meta, model_tensors(variant)).to(params.runtime.device)
    meta["test_accuracy"] = accuracy(stored, test.x, test.y)
    save_model_file(variant_path(key), model_tensors(variant), meta)
    with stage_run(params.tracking, params.experiment.name, f"postprocess:{key}", {"stage": "postprocess", "key": key}) as run:
        run.log_params({"postprocess": entry})
        run.log_metrics({"test_accuracy": meta["test_accuracy"], "owner_test_accuracy": owner_meta["test_accuracy"]})
        run.log_artifact(variant_path(key).with_suffix(".json"))


def main() -> None:
    run_stage(__doc__ or "", postprocess, takes_key=True)


if __name__ == "__main__":
    main()
