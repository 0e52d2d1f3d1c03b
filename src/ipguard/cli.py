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
import math
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


# Decoys are the most confidently labelled of this many held-out images per decoy.
DECOY_POOL_FACTOR = 10

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
    import yaml

    from ipguard.data import Split, image_folder
    from ipguard.fingerprint import RESERVED_KEYS, generate
    from ipguard.foreign import load_suspect
    from ipguard.io import save_fingerprint_file

    entry = method_config(args.method)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key or key in RESERVED_KEYS:
            raise ConfigError(f"--set: expected KEY=VALUE with a key of the method's config other than "
                              f"{', '.join(RESERVED_KEYS)}, got '{item}'")
        entry[key] = yaml.safe_load(value)
    for key in ("n", "k", "seed"):
        if getattr(args, key) is not None:
            entry[key] = getattr(args, key)
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    mean, std = _normalization(args.model, args.arch, args.mean, args.std, args.no_normalize)
    model, meta = load_suspect(args.model, args.arch, mean, std, args.num_classes, args.input_shape,
                               arch_kwargs=args.arch_kwargs)
    shape, classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    if args.decoys and not args.data:
        raise ConfigError("--decoys: needs --data (held-out images to choose them from)")
    if args.decoys < 0:
        raise ConfigError(f"--decoys: must be >= 0, got {args.decoys}")
    held_out = None
    if args.data:
        # Decoys come from images beyond the first --data-limit (a seeded order), so that they are
        # never the starts of fingerprint points and the points are those of a set without decoys.
        extra = max(DECOY_POOL_FACTOR * args.decoys, args.decoys) if args.decoys else 0
        loaded = image_folder(args.data, shape, args.data_limit + extra, int(entry.get("seed", 0)))
        pool = Split(loaded.x[: args.data_limit], loaded.y[: args.data_limit])
        held_out = Split(loaded.x[args.data_limit :], loaded.y[args.data_limit :])
    else:
        import torch

        pool = Split(torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    if "data" in entry:  # a method that trains models of its own (cae) on the owner's own images
        if not args.train_data:
            raise ConfigError(f"--method {args.method}: needs --train-data, the owner's own training images (ImageFolder)")
        if args.data and Path(args.data).resolve() == Path(args.train_data).resolve():
            raise ConfigError("--train-data: must not be --data; the points start from held-out images")
        kwargs["data"] = image_folder(args.train_data, shape, args.train_limit or None, int(entry.get("seed", 0)))
    result = generate(entry["method"], model, pool, shape, classes, where=f"--method {args.method}", **kwargs)
    decoys = None
    if args.decoys:
        from ipguard.decoys import choose_decoys

        if held_out is None or held_out.x.shape[0] < args.decoys:
            raise ConfigError(f"--decoys: {args.data} holds {0 if held_out is None else held_out.x.shape[0]} images beyond "
                              f"--data-limit {args.data_limit}, fewer than the {args.decoys} decoys asked for")
        decoys = choose_decoys(model, held_out, args.decoys)
    fmeta = {"name": args.method, "method": entry["method"], "config": entry, "seed": int(entry.get("seed", 0)),
             "owner_sha256": meta["sha256"], "owner": Path(args.model).name, "dataset": args.data or "none",
             "num_classes": classes, "input_shape": list(shape), "stats": result.stats(), "score": result.score,
             **({"decoys": args.decoys} if decoys is not None else {})}
    digest = save_fingerprint_file(args.out, result.inputs, result.labels, fmeta, outputs=result.outputs, decoys=decoys)
    return {"fingerprints": str(args.out), "sha256": digest, "method": args.method, **result.stats(),
            **({"decoys": args.decoys} if decoys is not None else {})}


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
    if len(meta.get("input_shape", ())) == 3:
        import torch

        # NHWC: oneDNN's convolutions run about twice as fast so on a CPU (see models.accuracy);
        # the logits differ from NCHW's by float rounding only (1e-6), far below any margin.
        model = model.to(memory_format=torch.channels_last)
    return model, meta


def _match(model: Any, inputs: Any, labels: Any, path: str, kind: str = "match", outputs: Any = None) -> Any:
    """The suspect's :class:`ipguard.verify.Score` on the set (by its ``score`` kind)."""
    import torch

    from ipguard.verify import score

    if inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
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
    from ipguard.io import load_fingerprint_bundle, save_fingerprint_file, sha256_file
    from ipguard.stats import fit_calibration, fit_score_calibration

    _level(args)
    out = Path(args.out) if args.out else default_calibrated_path(args.fingerprints)
    if _same_file(out, args.fingerprints):
        raise ConfigError(f"--out: {out} is the input set; calibrate writes a new file and never changes its input")
    inputs, labels, outputs, decoys, fmeta = load_fingerprint_bundle(args.fingerprints)
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
        if decoys is not None:
            negatives[-1]["decoy_agreements"] = _match(model, decoys[0], decoys[1], cand.path).matches
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
    if decoys is not None:
        from ipguard.decoys import DecoyCalibration

        fmeta["decoy_calibration"] = DecoyCalibration(int(decoys[1].numel()),
                                                      tuple(m["decoy_agreements"] for m in negatives)).to_dict()
    digest = save_fingerprint_file(out, inputs, labels, {**fmeta, "calibration": calibration}, outputs=outputs, decoys=decoys)
    return {"fingerprints": str(out), "input": str(args.fingerprints), "sha256": digest,
            "calibration": cal.to_dict(), "negatives": negatives}


@dataclass
class _VerifySet:
    """A calibrated fingerprint set, read once for every suspect of a ``verify``."""

    path: str
    inputs: Any
    labels: Any
    outputs: Any
    meta: dict[str, Any]
    kind: str
    cal: Any
    level: float
    decoys: Any = None
    decoy_cal: Any = None


def _verify_set(args: argparse.Namespace) -> _VerifySet:
    from ipguard.decoys import DecoyCalibration
    from ipguard.io import load_fingerprint_bundle
    from ipguard.stats import Calibration, ScoreCalibration

    _level(args)
    inputs, labels, outputs, decoys, fmeta = load_fingerprint_bundle(args.fingerprints, args.expect_sha256)
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
    decoy_cal = None
    if decoys is not None and "decoy_calibration" in fmeta:
        try:
            decoy_cal = DecoyCalibration.from_dict(fmeta["decoy_calibration"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FingerprintFileError(f"{args.fingerprints}: {exc}; run calibrate again") from exc
    return _VerifySet(args.fingerprints, inputs, labels, outputs, fmeta, kind, cal, level, decoys, decoy_cal)


def _with_decoys(vs: _VerifySet, out: dict[str, Any], agree: int | None) -> dict[str, Any]:
    """The verdict ``out`` after the decoy check (:mod:`ipguard.decoys`), with the decoys' count."""
    from ipguard.decoys import judge_decoys

    if agree is None or vs.decoy_cal is None:
        return out
    n = int(vs.decoys[1].numel())
    out.update(decoys=n, decoy_agreement=agree / n)
    why = judge_decoys(agree, n, vs.decoy_cal, out["verdict"], vs.level)
    if why is not None and out["verdict"] != "inconclusive":
        p = "" if out.get("p_value") is None else f", p = {out['p_value']:.3g}"
        out.update(verdict="inconclusive", reason=f"{why} (by the fingerprints alone: {out['verdict']}{p})")
    return out


def _verdict(vs: _VerifySet, result: Any) -> dict[str, Any]:
    """The verdict on a suspect's score, with everything needed to defend it."""
    from ipguard.decoys import assess_answers
    from ipguard.stats import assess_score

    if vs.kind == "match":
        verdict = assess_answers(result.matches, result.n, vs.cal, vs.level)
    else:
        verdict = assess_score(result.score, vs.cal, vs.level)
    return {
        "score": vs.kind, "matching_rate": result.score, "matches": result.matches, "n": result.n,
        "p_value": verdict.p_value, "level": vs.level, "verdict": verdict.verdict, "reason": verdict.reason,
        **_set_facts(vs),
    }


def _set_facts(vs: _VerifySet) -> dict[str, Any]:
    worst_p, worst = vs.cal.worst_negative
    return {"method": vs.meta.get("method"), "fingerprint_sha256": vs.meta["sha256"],
            "owner_sha256": vs.meta.get("owner_sha256"), "calibration_negatives": vs.cal.negatives,
            "null_mean_matching_rate": vs.cal.mean, "null_spread": vs.cal.spread, "min_p_value": vs.cal.min_p_value,
            "worst_negative": worst or None, "worst_negative_p": worst_p if math.isfinite(worst_p) else None}


def _suspect_candidates(args: argparse.Namespace) -> list[tuple[Candidate, str | None]]:
    """The suspects of a ``verify``: ``--model`` files and the models of ``--models-manifest``."""
    from ipguard.foreign import read_manifest

    paths = args.model or []
    archs = args.arch or [None]
    if args.arch and not paths:
        raise ConfigError("--arch: applies to --model, and none is given (a manifest names its own architectures)")
    if paths and len(archs) not in (1, len(paths)):
        raise ConfigError(f"--arch: give one architecture for all {len(paths)} models, or one per model (got {len(archs)})")
    archs = archs * len(paths) if len(archs) == 1 else archs
    out: list[tuple[Candidate, str | None]] = []
    for path, arch in zip(paths, archs):
        mean, std = _normalization(path, arch, args.mean, args.std, args.no_normalize)
        out.append((Candidate(path, arch, dict(args.arch_kwargs or {}), mean, std), None))
    for manifest in args.models_manifest or []:
        for entry in read_manifest(manifest):
            bare = args.no_normalize and entry.mean is None and entry.std is None
            mean, std = _normalization(str(entry.path), entry.arch, entry.mean, entry.std, bare,
                                       flags=f"'mean'/'std' in {manifest}")
            out.append((Candidate(str(entry.path), entry.arch, entry.arch_kwargs, mean, std, entry.name), entry.sha256))
    return out


def _verify_file(vs: _VerifySet, cand: Candidate, expected_sha256: str | None) -> dict[str, Any]:
    if expected_sha256 is not None:
        from ipguard.foreign import ManifestModel, check_manifest_file

        check_manifest_file(ManifestModel(cand.name or Path(cand.path).stem, Path(cand.path), "", sha256=expected_sha256), "manifest")
    model, meta = _suspect(cand, vs.meta)
    result = _match(model, vs.inputs, vs.labels, cand.path, vs.kind, vs.outputs)
    agree = _match(model, vs.decoys[0], vs.decoys[1], cand.path).matches if vs.decoy_cal is not None else None
    out = {**({"model": cand.name} if cand.name else {}), "file": cand.path, **_verdict(vs, result),
           "model_sha256": meta["sha256"]}
    return _with_decoys(vs, out, agree)


def cmd_verify(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]]:
    sources = sum(bool(x) for x in (args.model, args.models_manifest, args.url))
    if sources == 0:
        raise ConfigError("verify needs a suspect: --model FILE..., --models-manifest FILE.json or --url URL")
    if args.url and sources > 1:
        raise ConfigError("--url: verifies one service; give it without --model/--models-manifest")
    shard, shards = _shard(args.shard)
    if getattr(args, "jobs", 1) < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {args.jobs}")
    if args.url and (args.shard or args.out):
        raise ConfigError("--shard/--out: apply to many suspects (--model/--models-manifest), not to --url")
    vs = _verify_set(args)
    if args.url:
        return _verify_url(args, vs)
    candidates = _suspect_candidates(args)
    if len(candidates) == 1 and args.model and not args.out and not args.shard:
        return _verify_file(vs, *candidates[0])
    candidates = candidates[shard::shards]
    from ipguard.progress import bar

    def one(item: tuple[Candidate, str | None]) -> dict[str, Any]:
        cand, sha = item
        try:
            return _verify_file(vs, cand, sha)
        except IpguardError as exc:  # one bad suspect does not stop a hub's check; the exit status says so
            return {**({"model": cand.name} if cand.name else {}), "file": cand.path, "verdict": None,
                    "error": _one_line(exc)}

    jobs = min(args.jobs, len(candidates))
    if jobs <= 1:
        return [one(c) for c in bar(candidates, desc="verify", unit="model")]
    import torch
    from concurrent.futures import ThreadPoolExecutor

    from ipguard.models import is_user_arch, user_arch

    for spec in sorted({c.arch for c, _ in candidates if c.arch and is_user_arch(c.arch)}):
        try:  # each user file executed once, here, not by two threads at once
            user_arch(spec)
        except IpguardError:
            pass  # the suspects naming it get the error on their own lines
    # A small network's forward pass on 100 points cannot keep several threads busy (the late
    # layers are 8x8): one suspect per core, each on its own share of the threads, does more.
    # Each worker sets its share itself: a thread's intra-op pool is its own, and left alone it
    # takes the default (every core), so two workers would run four threads on two cores
    # (benchmarks/verify_many.py: 8.3 suspects/s at --jobs 2 so, as at --jobs 1).
    threads = torch.get_num_threads()
    share = max(1, threads // jobs)
    torch.set_num_threads(share)
    try:
        with ThreadPoolExecutor(jobs, initializer=torch.set_num_threads, initargs=(share,)) as pool:
            return list(bar(pool.map(one, candidates), total=len(candidates), desc="verify", unit="model"))
    finally:
        torch.set_num_threads(threads)


def _shard(text: str | None) -> tuple[int, int]:
    """``--shard I/K``: the I-th of K interleaved slices of the suspects (0-based)."""
    if not text:
        return 0, 1
    i, sep, k = text.partition("/")
    try:
        shard, shards = int(i), int(k)
    except ValueError:
        shard, shards = -1, 0
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"--shard: expected I/K with 0 <= I < K, e.g. 0/4, got '{text}'")
    return shard, shards


def _header(text: str) -> tuple[str, str]:
    """``'Name: value'`` with ``$VAR``/``${VAR}`` taken from the environment (so that a token never
    lands in a shell history or a log: write it in single quotes)."""
    import re

    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"--header: expected 'Name: value', got '{text.split(':')[0]}...'")

    def env(m: re.Match[str]) -> str:
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise ConfigError(f"--header {name.strip()}: the environment variable {var} is not set")
        return os.environ[var]

    return name.strip(), re.sub(r"\$\{(\w+)\}|\$(\w+)", env, value.strip())


def _verify_url(args: argparse.Namespace, vs: _VerifySet) -> dict[str, Any]:
    """Verify a suspect behind a prediction service (:mod:`ipguard.remote`)."""
    import secrets

    import torch

    from ipguard.remote import PredictionService, ServiceSpec, query_plan, survey
    from ipguard.verify import score_answers

    if args.arch or args.no_normalize:
        raise ConfigError("--url: the service's model is the service's business; --arch/--no-normalize do not apply")
    try:
        spec = ServiceSpec(
            args.url, args.protocol, args.model_name, dict(_header(h) for h in args.header or []), args.batch_size,
            args.timeout, args.retries, args.backoff, rate=args.rate, max_queries=args.max_queries,
            mean=args.mean, std=args.std, uint8=args.uint8)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    num_classes = int(vs.meta.get("num_classes") or (vs.outputs.shape[1] if vs.outputs is not None else int(vs.labels.max()) + 1))
    service = PredictionService(spec, num_classes, list(vs.inputs.shape[1:])).open()
    seed = args.query_seed if args.query_seed is not None else secrets.randbits(31)
    if not 0 <= args.repeat_share <= 1:
        raise ConfigError(f"--repeat-share: must lie in [0, 1], got {args.repeat_share:g}")
    n = int(vs.labels.numel())
    asked = vs.inputs if vs.decoy_cal is None else torch.cat([vs.inputs, vs.decoys[0]])
    plan = query_plan(int(asked.shape[0]), spec.batch_size, args.repeat_share, seed)
    s = survey(service, asked, plan)
    facts = {**service.describe(), "query_seed": seed, "repeated": s.repeated, "changed_answers": len(s.changed),
             "answered": int(s.answered.sum()), "model_sha256": None}
    if not s.complete:
        return {"score": vs.kind, "matching_rate": None, "matches": None, "n": int(vs.labels.numel()), "p_value": None,
                "level": vs.level, "verdict": "inconclusive",
                "reason": f"{s.stopped}: {int(s.answered.sum())} of {vs.labels.numel()} points answered; "
                          "raise --max-queries to decide", **_set_facts(vs), **facts}
    labels, scores = s.answers.labels[:n], None if s.answers.logits is None else s.answers.logits[:n]
    try:
        result = score_answers(vs.kind, vs.labels, labels, scores, vs.outputs)
    except ValueError as exc:
        raise ConfigError(f"{args.url}: {exc}") from exc
    agree = int((s.answers.labels[n:] == vs.decoys[1]).sum()) if vs.decoy_cal is not None else None
    out = _with_decoys(vs, {**_verdict(vs, result), **facts}, agree)
    if s.changed:
        out.update(verdict="inconclusive", reason=(
            f"the service changed its answer to {len(s.changed)} of {s.repeated} points asked twice: it answers "
            "at random or detects fingerprint queries, so its answers cannot show independence "
            f"(as answered: {out['verdict']}, p = {out['p_value']:.3g})"))
    return out


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
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a key of the method's config (a YAML value), e.g. --set eps=0.1; may be repeated")
    p.add_argument("--data", help="ImageFolder of real images, for methods that start from them")
    p.add_argument("--data-limit", type=int, default=1000, help="at most this many images of --data (default 1000)")
    p.add_argument("--train-data", help="ImageFolder of the owner's own training images, for methods that train models "
                   "of their own on them (cae: surrogates and references)")
    p.add_argument("--train-limit", type=int, default=0, help="at most this many images of --train-data (default 0: all)")
    p.add_argument("--decoys", type=int, default=0,
                   help="also keep this many decoys: images of --data beyond --data-limit that the owner labels with the "
                        "largest margin, asked among the points by verify (a service that treats fingerprint queries "
                        "apart then gets 'inconclusive'; default 0)")
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
    p.add_argument("--model", nargs="+", help="the suspect(s): ipguard model files, or foreign state dicts with --arch")
    p.add_argument("--models-manifest", action="append", metavar="FILE.json",
                   help="suspects listed in a manifest (the public zoo's format); repeatable")
    _model_args(p, many=True)
    p.add_argument("--level", type=float, help="significance level, in (0, 1) (default: the one stored at calibration)")
    p.add_argument("--expect-sha256", help="refuse a fingerprint file whose sha256 is not this")
    p.add_argument("--json", action="store_true", help="print one JSON object (one line per suspect for several)")
    p.add_argument("--shard", metavar="I/K", help="verify only the I-th of K interleaved slices of the suspects (0-based), "
                                                  "for a hub split over jobs (see ipguard.hub)")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the suspects' JSON lines to this file (atomically) as well")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="suspects checked at once (threads), the torch threads shared among them; for small models on "
                        "a CPU, one per core is fastest (default 1)")
    g = p.add_argument_group("a suspect behind a prediction service (--url)")
    g.add_argument("--url", help="the service: its base address or endpoint (MLflow serving or Open Inference Protocol v2)")
    g.add_argument("--protocol", choices=["mlflow", "v2"], help="default: asked of the server (/v2/health/ready, /ping)")
    g.add_argument("--model-name", help="the model's name on a v2 server")
    g.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                   help="an HTTP header; $VAR or ${VAR} in VALUE is read from the environment, e.g. "
                        "--header 'Authorization: Bearer ${API_TOKEN}' (single quotes: the token stays out of the shell history)")
    g.add_argument("--batch-size", type=int, default=100, help="images per request (default 100)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds to connect and to read an answer (default 30)")
    g.add_argument("--retries", type=int, default=3, help="further attempts after a connection error or 408/429/5xx (default 3)")
    g.add_argument("--backoff", type=float, default=0.5, help="seconds before the first retry, doubled each time (default 0.5)")
    g.add_argument("--rate", type=float, default=0.0, help="at most this many requests per second (default: no limit)")
    g.add_argument("--max-queries", type=int, help="images sent at most, retries and repeats included; when it runs out "
                                                     "the verdict is inconclusive (default: no limit)")
    g.add_argument("--uint8", action="store_true", help="send 8-bit pixels (0-255) to a service that takes images")
    g.add_argument("--repeat-share", type=float, default=0.1,
                   help="share of points asked a second time in another batch; a changed answer makes the verdict "
                        "inconclusive (default 0.1)")
    g.add_argument("--query-seed", type=int, help="seed of the query order (default: a fresh random one, reported)")
    p.set_defaults(run=cmd_verify)
    return parser


def _print_human(verb: str, result: dict[str, Any]) -> None:
    if verb == "verify":
        p = "no p-value" if result["p_value"] is None else f"p = {result['p_value']:.3g}"
        print(f"verdict: {result['verdict']} ({p}, level {result['level']:g})"
              + (f": {result['reason']}" if result.get("reason") else ""))
        if result.get("url"):
            print(f"service: {result['url']} ({result['protocol']}); {result['queries']} queries in {result['requests']} "
                  f"requests, {result['retries']} retries; {result['repeated']} points asked twice, "
                  f"{result['changed_answers']} answers changed; query seed {result['query_seed']}")
        if result.get("decoys"):
            print(f"decoys: {result['decoy_agreement']:.3f} of {result['decoys']} labelled as the owner does")
        if result["matching_rate"] is None:
            pass
        elif result.get("score", "match") == "match":
            print(f"matching rate: {result['matching_rate']:.3f} ({result['matches']}/{result['n']} points); "
                  f"independent models match {result['null_mean_matching_rate']:.3f} ± {result['null_spread']:.3f} "
                  f"(calibrated on {result['calibration_negatives']}; smallest possible p {result['min_p_value']:.3g})")
        else:
            print(f"{result['score']} similarity: {result['matching_rate']:.4f} ({result['n']} queries); independent "
                  f"models score {result['null_mean_matching_rate']:.4f} ± {result['null_spread']:.4f} "
                  f"(calibrated on {result['calibration_negatives']}; smallest possible p {result['min_p_value']:.3g})")
        print(f"fingerprints sha256 {result['fingerprint_sha256']}"
              + (f"; model sha256 {result['model_sha256']}" if result.get("model_sha256") else ""))
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
        if cal.get("worst_negative_p") is not None and cal["worst_negative_p"] <= cal["level"]:
            print(f"warning: left out, {cal['worst_negative']} gets p = {cal['worst_negative_p']:.3g} from the other "
                  f"negatives: this calibration calls no suspect pirated at level {cal['level']:g} (its negatives are "
                  "not all of one kind); calibrate with more models like it")
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
    if isinstance(result, list):  # several suspects: one line each; a suspect that could not be checked: status 2
        if getattr(args, "out", None):
            from ipguard.io import write_text

            write_text(args.out, "".join(json.dumps(item, sort_keys=True) + "\n" for item in result))
        for item in result:
            print(json.dumps(item, sort_keys=True) if args.json else _summary_line(item))
        return 2 if any(item.get("error") for item in result) else 0
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_human(args.verb, result)
    return 0


def _summary_line(item: dict[str, Any]) -> str:
    name = item.get("model") or item.get("file")
    if item.get("error"):
        return f"{name}: error: {item['error']}"
    return f"{name}: {item['verdict']} (score {item['matching_rate']:.4f}, p = {item['p_value']:.3g})"


if __name__ == "__main__":
    raise SystemExit(main())
