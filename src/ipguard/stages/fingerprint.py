"""Stage ``fingerprint``: one fingerprint set of the owner, by the method ``fingerprint.<key>``.

Reads ``fingerprint.<key>`` and ``dataset``. A real-image ``pool`` that holds images any model of
the experiment trains on (the owner's split, a zoo model's or a copy's ``data``) is refused. An
entry's ``data`` names the split a method trains models of its own on (``cae``: the owner's
surrogates and references); it must not be the pool, whose images start the points.
"""

from __future__ import annotations

from ipguard.config import Params, to_dict
from ipguard.errors import ConfigError
from ipguard.fingerprint import RESERVED_KEYS, check_method, generate
from ipguard.io import save_fingerprint_file, write_json
from ipguard.stages.common import check_pool, fingerprint_path, load_pool, load_split, load_zoo_model, run_stage
from ipguard.tracking import stage_run


def fingerprint(params: Params, key: str | None) -> None:
    assert key is not None
    if key not in params.fingerprint:
        raise ConfigError(f"fingerprint: no method entry named '{key}'")
    entry = dict(params.fingerprint[key])
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    check_method(entry["method"], kwargs, f"fingerprint.{key}")
    check_pool(params, str(entry.get("pool", "test")), f"fingerprint.{key}.pool")
    if "data" in entry and str(entry["data"]) == str(entry.get("pool", "test")):
        raise ConfigError(f"fingerprint.{key}.data: '{entry['data']}' is also the pool; the models a method trains "
                          "must not have seen the images its points start from")
    owner, owner_meta = load_zoo_model(Params.OWNER, params.runtime.device)
    pool = load_pool(entry.get("pool", "test"))
    if "data" in entry:
        kwargs["data"] = load_split(str(entry["data"]))
    ds = params.dataset
    result = generate(entry["method"], owner, pool, tuple(ds.input_shape), ds.num_classes, where=f"fingerprint.{key}", **kwargs)
    meta = {
        "name": key,
        "method": entry["method"],
        "config": entry,
        "seed": int(entry.get("seed", 0)),
        "owner_sha256": owner_meta["sha256"],
        "owner": owner_meta["name"],
        "dataset": ds.name,
        "num_classes": ds.num_classes,
        "input_shape": list(ds.input_shape),
        "score": result.score,
    }
    path = fingerprint_path(key)
    digest = save_fingerprint_file(path, result.inputs, result.labels, meta, outputs=result.outputs)
    # Generation cost beside the set; seconds vary between runs, so they are not in the set itself.
    stats = result.stats()
    write_json(path.with_suffix(".json"), {"sha256": digest, **meta, "stats": stats})
    with stage_run(params.tracking, params.experiment.name, f"fingerprint:{key}", {"stage": "fingerprint", "key": key}) as run:
        run.log_params({"fingerprint": entry, "dataset": to_dict(ds)["name"]})
        run.log_metrics(stats)
        run.log_artifact(path.with_suffix(".json"))


def main() -> None:
    run_stage(__doc__ or "", fingerprint, takes_key=True)


if __name__ == "__main__":
    main()
