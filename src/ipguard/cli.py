"""The ``ipguard`` command: fingerprint a model, calibrate a fingerprint set, verify a suspect.

Bad input (a missing or corrupt file, a refused pickle, a model that does not fit the
fingerprints) prints one line naming the problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ipguard.config import CONF_DIR
from ipguard.errors import ConfigError, FingerprintFileError, IpguardError, ModelFileError


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from exc


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from exc


def _model_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument("--arch", nargs="+" if many else None, help="registry architecture of a foreign state dict "
                        "(e.g. cifar_resnet20); not needed for ipguard's own model files")
    parser.add_argument("--mean", type=_floats, help="input normalisation mean of a foreign model, e.g. 0.485,0.456,0.406")
    parser.add_argument("--std", type=_floats, help="input normalisation std of a foreign model, e.g. 0.229,0.224,0.225")


def method_config(name: str) -> dict[str, Any]:
    """The entry ``name`` of ``conf/fingerprint/<name>.yaml``: the same defaults as the pipeline."""
    path = CONF_DIR / "fingerprint" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "fingerprint").glob("*.yaml")))
        raise ConfigError(f"--method: unknown fingerprint method '{name}' (known: {known})")
    entry = OmegaConf.to_container(OmegaConf.load(path), resolve=True)[name]  # type: ignore[index]
    return dict(entry)  # type: ignore[arg-type]


def cmd_fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    from ipguard.data import Split, image_folder
    from ipguard.fingerprint import RESERVED_KEYS, generate
    from ipguard.foreign import load_suspect
    from ipguard.io import save_fingerprint_file

    entry = method_config(args.method)
    for key in ("n", "k", "seed"):
        if getattr(args, key) is not None:
            entry[key] = getattr(args, key)
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    model, meta = load_suspect(args.model, args.arch, args.mean, args.std, args.num_classes, args.input_shape)
    shape, classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    if args.data:
        pool = image_folder(args.data, shape, args.data_limit, int(entry.get("seed", 0)))
    else:
        import torch

        pool = Split(torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    result = generate(entry["method"], model, pool, shape, classes, where=f"--method {args.method}", **kwargs)
    fmeta = {"name": args.method, "method": entry["method"], "config": entry, "seed": int(entry.get("seed", 0)),
             "owner_sha256": meta["sha256"], "owner": Path(args.model).name, "dataset": args.data or "none",
             "num_classes": classes, "input_shape": list(shape), "stats": result.stats()}
    digest = save_fingerprint_file(args.out, result.inputs, result.labels, fmeta)
    return {"fingerprints": str(args.out), "sha256": digest, "method": args.method, **result.stats()}


def _check_fits(path: str, meta: dict[str, Any], fmeta: dict[str, Any]) -> None:
    if "num_classes" in fmeta and int(meta["num_classes"]) != int(fmeta["num_classes"]):
        raise ModelFileError(f"{path}: has {meta['num_classes']} classes, the fingerprints {fmeta['num_classes']}")
    if "input_shape" in fmeta and list(meta["input_shape"]) != list(fmeta["input_shape"]):
        raise ModelFileError(f"{path}: takes inputs {meta['input_shape']}, the fingerprints are {fmeta['input_shape']}")


def _suspect(path: str, arch: str | None, args: argparse.Namespace, fmeta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from ipguard.foreign import load_suspect
    from ipguard.io import read_sidecar, sidecar_path

    if arch is None and sidecar_path(path).is_file():
        _check_fits(path, read_sidecar(path), fmeta)  # before building: a clearer message than a shape error
    model, meta = load_suspect(path, arch, args.mean, args.std, fmeta.get("num_classes"), fmeta.get("input_shape"))
    _check_fits(path, meta, fmeta)
    return model, meta


def _match(model: Any, inputs: Any, labels: Any, path: str) -> Any:
    from ipguard.verify import match

    try:
        return match(model, inputs, labels)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: cannot run on the fingerprint points ({str(exc).splitlines()[0][:200]})") from exc


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from ipguard.io import load_fingerprint_file, save_fingerprint_file
    from ipguard.stats import fit_calibration

    inputs, labels, fmeta = load_fingerprint_file(args.fingerprints)
    archs = args.arch or [None]
    if len(archs) not in (1, len(args.negatives)):
        raise ConfigError("--arch: give one architecture for all negatives, or one per negative")
    archs = archs * len(args.negatives) if len(archs) == 1 else archs
    negatives = []
    for path, arch in zip(args.negatives, archs):
        model, meta = _suspect(path, arch, args, fmeta)
        result = _match(model, inputs, labels, path)
        negatives.append({"model": Path(path).name, "model_sha256": meta["sha256"], "matches": result.matches,
                          "matching_rate": result.matching_rate})
    cal = fit_calibration([m["matches"] for m in negatives], int(labels.numel()), args.level)
    fmeta.pop("sha256", None)
    out = args.out or args.fingerprints
    digest = save_fingerprint_file(out, inputs, labels, {**fmeta, "calibration": {**cal.to_dict(), "models": negatives}})
    return {"fingerprints": str(out), "sha256": digest, "calibration": cal.to_dict(), "negatives": negatives}


def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    from ipguard.io import load_fingerprint_file
    from ipguard.stats import Calibration, p_value, verdict

    inputs, labels, fmeta = load_fingerprint_file(args.fingerprints, args.expect_sha256)
    if "calibration" not in fmeta:
        raise FingerprintFileError(f"{args.fingerprints}: not calibrated; run `ipguard calibrate` with independent models first")
    try:
        cal = Calibration.from_dict(fmeta["calibration"])
    except (KeyError, TypeError) as exc:
        raise FingerprintFileError(f"{args.fingerprints}: calibration is malformed ({exc})") from exc
    level = args.level if args.level is not None else cal.level
    model, meta = _suspect(args.model, args.arch, args, fmeta)
    result = _match(model, inputs, labels, args.model)
    p = p_value(result.matches, result.n, cal)
    return {
        "matching_rate": result.matching_rate, "matches": result.matches, "n": result.n, "p_value": p, "level": level,
        "verdict": verdict(p, level), "method": fmeta.get("method"), "fingerprint_sha256": fmeta["sha256"],
        "model_sha256": meta["sha256"], "owner_sha256": fmeta.get("owner_sha256"),
        "null_mean_matching_rate": cal.mean, "calibration_negatives": cal.negatives,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipguard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("fingerprint", help="generate a fingerprint set of an owner model")
    p.add_argument("--model", required=True, help="the owner: an ipguard model file, or a foreign state dict with --arch")
    _model_args(p)
    p.add_argument("--num-classes", type=int, help="class count of a foreign model")
    p.add_argument("--input-shape", type=_ints, help="input shape of a foreign model, e.g. 3,32,32")
    p.add_argument("--method", default="ipguard", help="a config of conf/fingerprint/ (default: ipguard)")
    p.add_argument("--n", type=int, help="number of points (default: the method's config)")
    p.add_argument("--k", type=float, help="IPGuard margin k (default: the method's config)")
    p.add_argument("--seed", type=int, help="random seed (default: the method's config)")
    p.add_argument("--data", help="ImageFolder of real images, for methods that start from them")
    p.add_argument("--data-limit", type=int, default=1000, help="at most this many images of --data (default 1000)")
    p.add_argument("--out", required=True, help="where to write the fingerprint set (.safetensors)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=cmd_fingerprint)

    p = sub.add_parser("calibrate", help="fit the null distribution of independent models into a fingerprint set")
    p.add_argument("--fingerprints", required=True, help="the fingerprint set (.safetensors), updated in place")
    p.add_argument("--negatives", nargs="+", required=True, help="model files known to be independent of the owner")
    _model_args(p, many=True)
    p.add_argument("--level", type=float, default=0.01, help="significance level stored for verdicts (default 0.01)")
    p.add_argument("--out", help="write the calibrated set here instead of in place")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("verify", help="is a suspect a copy of the owner? matching rate, p-value, verdict")
    p.add_argument("--fingerprints", required=True, help="a calibrated fingerprint set")
    p.add_argument("--model", required=True, help="the suspect: an ipguard model file, or a foreign state dict with --arch")
    _model_args(p)
    p.add_argument("--level", type=float, help="significance level (default: the one stored at calibration)")
    p.add_argument("--expect-sha256", help="refuse a fingerprint file whose sha256 is not this")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_verify)
    return parser


def _print_human(verb: str, result: dict[str, Any]) -> None:
    if verb == "verify":
        print(f"verdict: {result['verdict']} (p = {result['p_value']:.3g}, level {result['level']:g})")
        print(f"matching rate: {result['matching_rate']:.3f} ({result['matches']}/{result['n']} points); "
              f"independent models match {result['null_mean_matching_rate']:.3f} on average "
              f"(calibrated on {result['calibration_negatives']})")
        print(f"fingerprints sha256 {result['fingerprint_sha256']}; model sha256 {result['model_sha256']}")
    else:
        for key, value in result.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except IpguardError as exc:
        print(f"ipguard {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_human(args.verb, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
