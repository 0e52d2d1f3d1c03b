"""Wall time of the default `dvc repro` from a fresh clone, and how much of it is DVC's own.

    python benchmarks/repro.py --out benchmarks/results/repro_digits.json

Clones this repository's HEAD (or ``--rev``) into a scratch folder, builds its environment (`make env`, not
timed: on a fresh machine it installs the requirements once), then times `dvc repro` there as
`make repro` runs it. With ``--stage-commands`` it then runs every stage's command alone, in
the pipeline's order and without DVC, so that the difference is what DVC itself costs: checking
and hashing deps and outs, caching the outputs, and rewriting the stage's dvc.lock after every
stage (a round-trip YAML parse and dump of the whole file; see dvc.yaml). Run it on quiet cores:
the budget (5 minutes on 2 cores) is for the wall time of `dvc repro`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage-commands", action="store_true", help="also time the stage commands without DVC")
    ap.add_argument("--rev", default="HEAD", help="the commit to clone (an earlier one, to compare)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch clone (its path is printed)")
    ap.add_argument("--out")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="ipguard-repro-"))
    clone = scratch / "ipguard"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        run(["make", "env"], clone, env)
        venv_env = {**env, "PATH": f"{clone / '.venv/bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(clone / ".venv")}
        seconds, proc = run(["dvc", "repro"], clone, venv_env)
        stages = re.findall(r"^Running stage '([^']+)'", proc.stdout, flags=re.M)
        locks = {p.relative_to(clone).as_posix(): len(p.read_text().splitlines())
                 for p in [clone / "dvc.lock", *sorted(clone.glob("pipelines/*/dvc.lock"))] if p.is_file()}
        result: dict = {
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "cpu": cpu_model(),
            "dvc_repro_seconds": round(seconds, 1), "stages_run": len(stages), "lock_lines": locks,
        }
        print(f"dvc repro from a fresh clone at {commit}: {seconds:.1f} s, {len(stages)} stages; lock lines {locks}")
        if args.stage_commands:
            _, dry = run(["dvc", "repro", "-f", "--dry"], clone, venv_env)
            commands = [line[2:] for line in dry.stdout.splitlines() if line.startswith("> ")]
            per_stage = []
            for command in commands:
                took, _ = run(command.split(), clone, venv_env)
                per_stage.append({"command": command, "seconds": round(took, 2)})
            alone = sum(s["seconds"] for s in per_stage)
            result |= {"stage_commands_seconds": round(alone, 1), "dvc_overhead_seconds": round(seconds - alone, 1),
                       "dvc_overhead_per_stage_seconds": round((seconds - alone) / max(len(commands), 1), 2),
                       "stage_commands": per_stage}
            print(f"the {len(commands)} stage commands alone: {alone:.1f} s; DVC's own: {seconds - alone:.1f} s "
                  f"({(seconds - alone) / max(len(commands), 1):.2f} s a stage)")
    finally:
        if args.keep:
            print(f"kept {clone}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
