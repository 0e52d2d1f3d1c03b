"""The ``ipguard`` command: fingerprint a model, calibrate a fingerprint set, verify a suspect.

Bad input (a missing or corrupt file, a refused pickle, a model that does not fit the
fingerprints, a level outside (0, 1)) prints one line naming the problem and exits with status
2; so does any unexpected error (set ``IPGUARD_DEBUG=1`` for its traceback). Files are written
atomically: a failed command leaves nothing half written, and ``calibrate`` never changes its
input set (a set's sha256 never changes under a user).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got '{text}' ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"arch\": \"resnet20\"}}', got '{text}'")
    return value


def _model_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument(
        "--arch", nargs="+" if many else None,
        help="architecture of a foreign state dict: a registry name (e.g. cifar_resnet20), timm/<name>, or a function "
             "of your own code, some.module:function or path/to/file.py:function (called with --arch-kwargs, plus "
             "num_classes=/input_shape= if it takes them; importing it runs that code); not needed for ipguard's "
             "own model files" + ("; one for all negatives or one per negative" if many else ""))
    parser.add_argument("--arch-kwargs", type=_json_object, default=None,
                        help="keyword arguments for --arch, as a JSON object, e.g. '{\"arch\": \"resnet20\"}'")
    parser.add_argument("--mean", type=_floats, help="input normalisation mean of a foreign model, e.g. 0.485,0.456,0.406")
    parser.add_argument("--std", type=_floats, help="input normalisation std of a foreign model, e.g. 0.229,0.224,0.225")
    parser.add_argument("--no-normalize", action="store_true",
                        help="the foreign model takes pixels in [0, 1] as they are (instead of --mean/--std)")


def _level(args: argparse.Namespace) -> None:
    """``--level`` must lie strictly between 0 and 1 (checked before any work)."""
    level = getattr(args, "level", None)
    if level is not None and not 0.0 < level < 1.0:
        raise ConfigError(f"--level: must lie strictly between 0 and 1, got {level:g}")


def _normalization(path: str, arch: str | None, mean: list[float] | None, std: list[float] | None,
                   no_normalize: bool, flags: str = "--mean/--std") -> tuple[list[float] | None, list[float] | None]:
    """The normalisation of a foreign model: given, or explicitly none (``--no-normalize``).

    Without it a foreign model would get the identity silently and, if it expects normalised
    inputs, mislabel the fingerprints and look independent.
    """
    if arch is None:
        return mean, std  # a project file: its sidecar says
    if no_normalize:
        if mean is not None or std is not None:
            raise ConfigError(f"{path}: give either {flags} or --no-normalize, not both")
        return None, None
    if mean is None or std is None:
        raise ConfigError(
            f"{path}: a foreign model needs its input normalisation: give {flags} "
            "(or --no-normalize if it takes pixels in [0, 1] as they are)"
        )
    return mean, std


# Chosen on the CIFAR-10 dev suspects (README, "Defaults"): k = 30 by dev ARUC; among the variants,
# the one whose calibrated verdicts call every dev copy pirated (ipguard_noise_ll has the best dev
# ARUC, but its independents match almost nothing, and so unevenly that p stays above 1e-3).
DEFAULT_METHOD = "ipguard"


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
    mean, std = _normalization(args.model, args.arch, args.mean, args.std, args.no_normalize)
    model, meta = load_suspect(args.model, args.arch, mean, std, args.num_classes, args.input_shape,
                               arch_kwargs=args.arch_kwargs)
    shape, classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    if args.data:
        pool = image_folder(args.data, shape, args.data_limit, int(entry.get("seed", 0)))
    else:
        import torch

        pool = Split(torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    result = generate(entry["method"], model, pool, shape, classes, where=f"--method {args.method}", **kwargs)
    fmeta = {"name": args.method, "method": entry["method"], "config": entry, "seed": int(entry.get("seed", 0)),
             "owner_sha256": meta["sha256"], "owner": Path(args.model).name, "dataset": args.data or "none",
             "num_classes": classes, "input_shape": list(shape), "stats": result.stats(), "score": result.score}
    digest = save_fingerprint_file(args.out, result.inputs, result.labels, fmeta, outputs=result.outputs)
    return {"fingerprints": str(args.out), "sha256": digest, "method": args.method, **result.stats()}


def _check_fits(path: str, meta: dict[str, Any], fmeta: dict[str, Any]) -> None:
    if "num_classes" in fmeta and int(meta["num_classes"]) != int(fmeta["num_classes"]):
        raise ModelFileError(f"{path}: has {meta['num_classes']} classes, the fingerprints {fmeta['num_classes']}")
    if "input_shape" in fmeta and list(meta["input_shape"]) != list(fmeta["input_shape"]):
        raise ModelFileError(f"{path}: takes inputs {meta['input_shape']}, the fingerprints are {fmeta['input_shape']}")


@dataclass
class Candidate:
    """A model to load: its file and, for a foreign one, how to build and feed it."""

    path: str
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    name: str | None = None


def _suspect(c: Candidate, fmeta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from ipguard.foreign import load_suspect
    from ipguard.io import read_sidecar, sidecar_path

    if c.arch is None and sidecar_path(c.path).is_file():
        _check_fits(c.path, read_sidecar(c.path), fmeta)  # before building: a clearer message than a shape error
    model, meta = load_suspect(c.path, c.arch, c.mean, c.std, fmeta.get("num_classes"), fmeta.get("input_shape"),
                               arch_kwargs=c.arch_kwargs)
    _check_fits(c.path, meta, fmeta)
    return model, meta


def _match(model: Any, inputs: Any, labels: Any, path: str, kind: str = "match", outputs: Any = None) -> Any:
    """The suspect's :class:`ipguard.verify.Score` on the set (by its ``score`` kind)."""
    from ipguard.verify import score

    try:
        return score(model, inputs, labels, kind, outputs)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot run on the fingerprint points ({str(exc).splitlines()[0][:200]})") from exc


def default_calibrated_path(fingerprints: str | Path) -> Path:
    """Where ``calibrate`` writes by default: beside the input, ``r20.safetensors`` → ``r20.calibrated.safetensors``."""
    path = Path(fingerprints)
    return path.with_name(f"{path.stem}.calibrated{path.suffix or '.safetensors'}")


def _same_file(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def _negative_candidates(args: argparse.Namespace) -> list[tuple[Candidate, str | None, str]]:
    """Every negative to load, with the sha256 a manifest records for it and where it came from."""
    from ipguard.foreign import read_manifest

    out: list[tuple[Candidate, str | None, str]] = []
    paths = args.negatives or []
    archs = args.arch or [None]
    if args.arch and not paths:
        raise ConfigError("--arch: applies to --negatives, and none are given (a manifest names its own architectures)")
    if len(archs) not in (1, len(paths)) and paths:
        raise ConfigError(f"--arch: give one architecture for all {len(paths)} negatives, or one per negative (got {len(archs)})")
    archs = archs * len(paths) if len(archs) == 1 else archs
    for path, arch in zip(paths, archs):
        mean, std = _normalization(path, arch, args.mean, args.std, args.no_normalize)
        out.append((Candidate(path, arch, dict(args.arch_kwargs or {}), mean, std), None, "--negatives"))
    excluded = set(args.exclude or [])
    used: set[str] = set()
    for manifest in args.negatives_manifest or []:
        for entry in read_manifest(manifest):
            keys = {entry.name, entry.path.name}
            if keys & excluded:
                used |= keys & excluded
                continue
            # --no-normalize speaks for the manifest's models only where the manifest gives no normalisation.
            bare = args.no_normalize and entry.mean is None and entry.std is None
            mean, std = _normalization(str(entry.path), entry.arch, entry.mean, entry.std, bare,
                                       flags=f"'mean'/'std' in {manifest}")
            out.append((Candidate(str(entry.path), entry.arch, entry.arch_kwargs, mean, std, entry.name), entry.sha256, manifest))
    if excluded - used:
        raise ConfigError(f"--exclude: no model named '{sorted(excluded - used)[0]}' in the manifest(s)")
    if not out:
        raise ConfigError("calibrate needs negatives: give --negatives and/or --negatives-manifest")
    return out


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from ipguard.io import load_fingerprint_set, save_fingerprint_file, sha256_file
    from ipguard.stats import fit_calibration, fit_score_calibration

    _level(args)
    out = Path(args.out) if args.out else default_calibrated_path(args.fingerprints)
    if _same_file(out, args.fingerprints):
        raise ConfigError(f"--out: {out} is the input set; calibrate writes a new file and never changes its input")
    inputs, labels, outputs, fmeta = load_fingerprint_set(args.fingerprints)
    kind = str(fmeta.get("score", "match"))
    candidates = _negative_candidates(args)
    # Hashes first: refuse the owner and duplicates before loading anything.
    owner = fmeta.get("owner_sha256")
    seen: dict[str, str] = {}
    for cand, expected, source in candidates:
        if expected is not None:
            from ipguard.foreign import ManifestModel, check_manifest_file

            digest = check_manifest_file(ManifestModel(cand.name or Path(cand.path).stem, Path(cand.path), "", sha256=expected), source)
        elif Path(cand.path).is_file():
            digest = sha256_file(cand.path)
        else:
            raise ModelFileError(f"{cand.path}: file not found")
        where = f"{cand.path} (from {source})"
        if owner and digest == owner:
            raise ConfigError(f"{where}: is the owner model itself (sha256 {digest[:12]}…); it cannot be a negative")
        if digest in seen:
            raise ConfigError(f"{where}: is the same file as {seen[digest]} (sha256 {digest[:12]}…); each negative counts once")
        seen[digest] = where
    negatives = []
    for cand, _, _ in candidates:
        model, meta = _suspect(cand, fmeta)
        result = _match(model, inputs, labels, cand.path, kind, outputs)
        negatives.append({"model": cand.name or Path(cand.path).name, "file": Path(cand.path).name,
                          "model_sha256": meta["sha256"], "matches": result.matches, "matching_rate": result.score})
    names = [m["model"] for m in negatives]
    extra = {"models": names} if "models" in inspect.signature(fit_calibration).parameters else {}
    try:
        if kind == "match":
            cal: Any = fit_calibration([m["matches"] for m in negatives], int(labels.numel()), args.level, **extra)
        else:  # SAC's similarity: a continuous score
            cal = fit_score_calibration([m["matching_rate"] for m in negatives], args.level, models=names)
    except ValueError as exc:
        raise ConfigError(f"calibrate: {exc}") from exc
    fmeta.pop("sha256", None)
    calibration = {**cal.to_dict(), "negative_models": negatives}
    digest = save_fingerprint_file(out, inputs, labels, {**fmeta, "calibration": calibration}, outputs=outputs)
    return {"fingerprints": str(out), "input": str(args.fingerprints), "sha256": digest,
            "calibration": cal.to_dict(), "negatives": negatives}


def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    from ipguard.io import load_fingerprint_set
    from ipguard.stats import Calibration, ScoreCalibration, assess, assess_score

    _level(args)
    inputs, labels, outputs, fmeta = load_fingerprint_set(args.fingerprints, args.expect_sha256)
    kind = str(fmeta.get("score", "match"))
    if "calibration" not in fmeta:
        raise FingerprintFileError(f"{args.fingerprints}: not calibrated; run `ipguard calibrate` with independent models first")
    continuous = kind != "match"
    if continuous != (isinstance(fmeta["calibration"], dict) and fmeta["calibration"].get("kind") == "continuous"):
        raise FingerprintFileError(f"{args.fingerprints}: its calibration does not fit its score '{kind}'; run calibrate again")
    try:
        cal: Any = (ScoreCalibration if continuous else Calibration).from_dict(fmeta["calibration"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FingerprintFileError(f"{args.fingerprints}: calibrated by an older ipguard; run calibrate again ({exc})") from exc
    level = args.level if args.level is not None else cal.level
    mean, std = _normalization(args.model, args.arch, args.mean, args.std, args.no_normalize)
    model, meta = _suspect(Candidate(args.model, args.arch, dict(args.arch_kwargs or {}), mean, std), fmeta)
    result = _match(model, inputs, labels, args.model, kind, outputs)
    verdict = assess_score(result.score, cal, level) if continuous else assess(result.matches, result.n, cal, level)
    return {
        "score": kind, "matching_rate": result.score, "matches": result.matches, "n": result.n,
        "p_value": verdict.p_value, "level": level, "verdict": verdict.verdict, "reason": verdict.reason,
        "method": fmeta.get("method"), "fingerprint_sha256": fmeta["sha256"],
        "model_sha256": meta["sha256"], "owner_sha256": fmeta.get("owner_sha256"),
        "calibration_negatives": cal.negatives, "null_mean_matching_rate": cal.mean, "null_spread": cal.spread,
        "min_p_value": cal.min_p_value,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipguard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("fingerprint", help="generate a fingerprint set of an owner model")
    p.add_argument("--model", required=True, help="the owner: an ipguard model file, or a foreign state dict with --arch")
    _model_args(p)
    p.add_argument("--num-classes", type=int, help="class count of a foreign model")
    p.add_argument("--input-shape", type=_ints, help="input shape of a foreign model, e.g. 3,32,32")
    p.add_argument("--method", default=DEFAULT_METHOD, help="a config of conf/fingerprint/ (default: "
                   f"{DEFAULT_METHOD}, chosen on CIFAR-10 dev suspects; see the README for other domains)")
    p.add_argument("--n", type=int, help="number of points (default: the method's config)")
    p.add_argument("--k", type=float, help="IPGuard margin k (default: the method's config)")
    p.add_argument("--seed", type=int, help="random seed (default: the method's config)")
    p.add_argument("--data", help="ImageFolder of real images, for methods that start from them")
    p.add_argument("--data-limit", type=int, default=1000, help="at most this many images of --data (default 1000)")
    p.add_argument("--out", required=True, help="where to write the fingerprint set (.safetensors)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=cmd_fingerprint)

    p = sub.add_parser("calibrate", help="fit the null distribution of independent models into a new fingerprint file")
    p.add_argument("--fingerprints", required=True, help="the fingerprint set (.safetensors); read, never changed")
    p.add_argument("--negatives", nargs="+", help="model files known to be independent of the owner")
    p.add_argument("--negatives-manifest", action="append", metavar="FILE.json",
                   help="a manifest of independent models (models[].file relative to it, arch built by build(name) of "
                        "the archs.py beside it, mean/std, sha256 checked); may be repeated and combined with --negatives")
    p.add_argument("--exclude", nargs="+", metavar="NAME",
                   help="leave out these manifest models (by name or file name), e.g. to keep them for verify")
    _model_args(p, many=True)
    p.add_argument("--level", type=float, default=0.01, help="significance level stored for verdicts, in (0, 1) (default 0.01)")
    p.add_argument("--out", help="where to write the calibrated set (default: beside the input, NAME.calibrated.safetensors)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("verify", help="is a suspect a copy of the owner? matching rate (or SAC similarity), p-value, verdict")
    p.add_argument("--fingerprints", required=True, help="a calibrated fingerprint set")
    p.add_argument("--model", required=True, help="the suspect: an ipguard model file, or a foreign state dict with --arch")
    _model_args(p)
    p.add_argument("--level", type=float, help="significance level, in (0, 1) (default: the one stored at calibration)")
    p.add_argument("--expect-sha256", help="refuse a fingerprint file whose sha256 is not this")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_verify)
    return parser


def _print_human(verb: str, result: dict[str, Any]) -> None:
    if verb == "verify":
        print(f"verdict: {result['verdict']} (p = {result['p_value']:.3g}, level {result['level']:g})"
              + (f": {result['reason']}" if result.get("reason") else ""))
        if result.get("score", "match") == "match":
            print(f"matching rate: {result['matching_rate']:.3f} ({result['matches']}/{result['n']} points); "
                  f"independent models match {result['null_mean_matching_rate']:.3f} ± {result['null_spread']:.3f} "
                  f"(calibrated on {result['calibration_negatives']}; smallest possible p {result['min_p_value']:.3g})")
        else:
            print(f"{result['score']} similarity: {result['matching_rate']:.4f} ({result['n']} queries); independent "
                  f"models score {result['null_mean_matching_rate']:.4f} ± {result['null_spread']:.4f} "
                  f"(calibrated on {result['calibration_negatives']}; smallest possible p {result['min_p_value']:.3g})")
        print(f"fingerprints sha256 {result['fingerprint_sha256']}; model sha256 {result['model_sha256']}")
    elif verb == "calibrate":
        cal = result["calibration"]
        print(f"calibrated set: {result['fingerprints']} (sha256 {result['sha256']}); {result['input']} unchanged")
        if cal.get("kind") == "continuous":
            for neg in result["negatives"]:
                print(f"  {neg['model']}: similarity {neg['matching_rate']:.4f}")
            print(f"negatives: {cal['negatives']}; mean similarity {cal['mean_score']:.4f}, max {cal['max_score']:.4f}; "
                  f"level {cal['level']:g}; smallest possible p {cal['min_p_value']:.3g}")
        else:
            for neg in result["negatives"]:
                print(f"  {neg['model']}: matching rate {neg['matching_rate']:.3f} ({neg['matches']}/{cal['n']})")
            print(f"negatives: {cal['negatives']}; mean matching rate {cal['mean_matching_rate']:.3f}, max "
                  f"{cal['max_matching_rate']:.3f}; level {cal['level']:g}; smallest possible p {cal['min_p_value']:.3g}")
    else:
        for key, value in result.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, IpguardError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except IpguardError as exc:
        print(f"ipguard {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything unforeseen: one line, not a traceback
        if os.environ.get("IPGUARD_DEBUG"):
            raise
        print(f"ipguard {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_human(args.verb, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
