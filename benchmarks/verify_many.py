"""Suspects per second of ``ipguard verify`` over a model hub: one process for many suspects
against one process per suspect, on the public CIFAR-10 zoo.

    python benchmarks/verify_many.py --shared ../shared --repeat 20 \
        --out benchmarks/results/verify_many_cpu.json
    python benchmarks/verify_many.py --shared ../shared --repeat 20 --jobs 2 \
        --out benchmarks/results/verify_many_cpu.json

The owner is the shared CIFAR ResNet-20; its ``--method`` set (100 points by default) is
calibrated on the whole public manifest. The suspects are the public zoo's ResNet-20s (12 files
by 8 authors), each listed ``--repeat`` times in a manifest of their own (so each is loaded and
queried that many times), verified in one process (``--models-manifest``, ``--jobs`` suspects at
a time, the torch threads shared among them); then a few of them in
a process each, as ``ipguard verify`` ran before. Each suspect costs a file read and its hash,
building the network, and the forward pass over the set. Figures are those of this machine while
the benchmark runs: run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NORM = ["--mean", "0.4914,0.4822,0.4465", "--std", "0.2470,0.2435,0.2616"]


def _cli(argv: list[str]) -> str:
    from ipguard.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"ipguard {' '.join(argv[:1])} failed with status {code}")
    return out.getvalue()


def _cpu() -> str:
    """The processor's name, and whether it has bf16 units (they decide how fast the zoo trains, not this)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    return f"{name}{' (AVX-512 BF16)' if 'avx512_bf16' in info else ''}"


def _ceiling(public: Path, r20: list[dict], cal: Path, rounds: int = 3) -> tuple[float, float]:
    """Mean seconds per suspect to load and build each ResNet-20 of the zoo, and to run it on the set's points."""
    from ipguard.foreign import load_suspect
    from ipguard.io import load_fingerprint_set
    from ipguard.models import predict

    inputs = load_fingerprint_set(cal)[0].contiguous(memory_format=torch.channels_last)
    load = forward = 0.0
    for _ in range(rounds):
        for m in r20:
            start = time.perf_counter()
            model, _meta = load_suspect(str(public / m["file"]), f"{public / 'archs.py'}:build", m["mean"], m["std"], 10,
                                        [3, 32, 32], arch_kwargs={"arch": m["arch"]})
            model = model.to(memory_format=torch.channels_last)
            mid = time.perf_counter()
            predict(model, inputs)
            load, forward = load + mid - start, forward + time.perf_counter() - mid
    return load / (rounds * len(r20)), forward / (rounds * len(r20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the folder with weights/")
    ap.add_argument("--method", default="ipguard")
    ap.add_argument("--n", type=int, default=100, help="fingerprint points (queries per suspect)")
    ap.add_argument("--repeat", type=int, default=20, help="times each ResNet-20 file is verified in the one process")
    ap.add_argument("--per-process", type=int, default=4, help="suspects verified in a process each")
    ap.add_argument("--jobs", type=int, default=1, help="verify --jobs: suspects checked at once in the one process")
    ap.add_argument("--out", type=Path, help="append the record to this JSON list")
    args = ap.parse_args()
    public = args.shared / "weights" / "cifar10-public"
    owner = args.shared / "weights" / "cifar10-resnet" / "resnet20-12fca82f.th"
    for need in (public / "manifest.json", owner):
        if not need.is_file():
            raise SystemExit(f"{need}: not found (give --shared)")
    manifest = json.loads((public / "manifest.json").read_text())
    r20 = [m for m in manifest["models"] if "20" in m["arch"]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        raw, cal = tmp_path / "r20.safetensors", tmp_path / "r20.calibrated.safetensors"
        t0 = time.perf_counter()
        _cli(["fingerprint", "--model", str(owner), "--arch", "cifar_resnet20", *NORM, "--num-classes", "10",
              "--input-shape", "3,32,32", "--method", args.method, "--n", str(args.n), "--out", str(raw)])
        t1 = time.perf_counter()
        _cli(["calibrate", "--fingerprints", str(raw), "--negatives-manifest", str(public / "manifest.json"), "--out", str(cal)])
        t2 = time.perf_counter()
        # The hub's manifest: the ResNet-20s, each --repeat times, beside a copy of the zoo's archs.py.
        hub = tmp_path / "hub"
        hub.mkdir()
        shutil.copy(public / "archs.py", hub / "archs.py")
        entries = [{**m, "name": f"{m['name']}#{i}", "file": str((public / m["file"]).resolve())}
                   for i in range(args.repeat) for m in r20]
        (hub / "manifest.json").write_text(json.dumps({"models": entries}))
        (hub / "one.json").write_text(json.dumps({"models": entries[:1]}))
        # The one-off part of a check (reading the set, importing scipy.stats, the calibration's
        # facts) from a manifest of one suspect: the rest of the big one is the rate per suspect
        # that a hub with thousands of uploads sees.
        start = time.perf_counter()
        _cli(["verify", "--fingerprints", str(cal), "--models-manifest", str(hub / "one.json"), "--json"])
        single = time.perf_counter() - start
        start = time.perf_counter()
        lines = _cli(["verify", "--fingerprints", str(cal), "--models-manifest", str(hub / "manifest.json"), "--json",
                      "--jobs", str(args.jobs)])
        one_process = time.perf_counter() - start
        load_s, forward_s = _ceiling(public, r20, cal)
        results = [json.loads(line) for line in lines.splitlines()]
        assert len(results) == len(entries) and not any(r.get("error") for r in results)
        # A process per suspect, as before: start-up (imports) paid each time.
        exe = Path(sys.executable).with_name("ipguard")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ipguard.cli"]
        start = time.perf_counter()
        for m in r20[: args.per_process]:
            subprocess.run([*cmd, "verify", "--fingerprints", str(cal), "--model", str(public / m["file"]), "--arch",
                            f"{public / 'archs.py'}:build", "--arch-kwargs", json.dumps({"arch": m["arch"]}),
                            "--mean", ",".join(map(str, m["mean"])), "--std", ",".join(map(str, m["std"])), "--json"],
                           check=True, capture_output=True, env=dict(os.environ, IPGUARD_PROGRESS="0"))
        per_process = (time.perf_counter() - start) / args.per_process
    record = {
        "benchmark": "verify_many", "method": args.method, "n": args.n, "suspects": len(entries),
        "distinct_files": len(r20), "one_process_seconds": round(one_process, 3),
        "suspects_per_second": round(len(entries) / one_process, 2),
        "seconds_per_suspect_one_process": round(one_process / len(entries), 4),
        "seconds_per_suspect_own_process": round(per_process, 3),
        "one_suspect_seconds": round(single, 3),
        "steady_suspects_per_second": round((len(entries) - 1) / (one_process - single), 2),
        # What the two parts of a suspect's check cost alone (one thread of work at a time, all
        # the torch threads): loading and building it, and the forward pass over the points.
        "load_seconds_per_suspect": round(load_s, 4), "forward_seconds_per_suspect": round(forward_s, 4),
        "forward_only_suspects_per_second": round(1 / forward_s, 2),
        "verdicts": {v: sum(r["verdict"] == v for r in results) for v in ("pirated", "inconclusive", "independent")},
        "fingerprint_seconds": round(t1 - t0, 2), "calibrate_seconds": round(t2 - t1, 2),
        "jobs": args.jobs, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "cpu": _cpu(),
        "torch": torch.__version__,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([*old, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
