"""Batched IPGuard generation against the per-point loop and against the floor.

    python benchmarks/generation.py --model ../shared/weights/cifar10-resnet/resnet20-12fca82f.th \
        --arch cifar_resnet20 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 [--device cuda]

Same owner, settings, starts and targets for both. The floor is point-iterations (of the batched
run) × the owner's forward+backward time per image, measured at the batch size used (n). Prints
one JSON object (and writes it with --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_ipguard import ipguard_per_point  # noqa: E402

from ipguard.data import Split  # noqa: E402
from ipguard.fingerprint import generate, ipguard_loss  # noqa: E402
from ipguard.foreign import load_suspect  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--arch")
    ap.add_argument("--mean", default=None)
    ap.add_argument("--std", default=None)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--input-shape", default="3,32,32")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=float, default=10.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--target", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-per-point", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split(","))
    mean = [float(v) for v in args.mean.split(",")] if args.mean else None
    std = [float(v) for v in args.std.split(",")] if args.std else None
    model, _ = load_suspect(args.model, args.arch, mean, std, args.num_classes, shape)
    model = model.to(args.device).eval()
    pool = Split(torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    settings = dict(n=args.n, k=args.k, lr=args.lr, max_iter=args.max_iter, start="noise", target=args.target, seed=args.seed)

    # Batched: the library's generator (the first run warms up kernels and allocators).
    times, fp = [], None
    for _ in range(args.repeats + 1):
        _sync(args.device)
        t = time.perf_counter()
        fp = generate("ipguard", model, pool, shape, args.num_classes, **settings)
        _sync(args.device)
        times.append(time.perf_counter() - t)
    assert fp is not None and fp.iterations is not None and fp.converged is not None
    batched = statistics.median(times[1:])
    point_iters = int(fp.iterations.sum())

    # The floor: forward+backward per image at batch size n, on the same owner.
    x = torch.rand((args.n, *shape), device=args.device)
    i = torch.zeros(args.n, dtype=torch.int64, device=args.device)
    j = torch.ones(args.n, dtype=torch.int64, device=args.device)
    fb = []
    for _ in range(10):
        xa = x.clone().requires_grad_(True)
        _sync(args.device)
        t = time.perf_counter()
        (g,) = torch.autograd.grad(ipguard_loss(model(xa), i, j, args.k).sum(), xa)
        _sync(args.device)
        fb.append((time.perf_counter() - t) / args.n)
    per_image = statistics.median(fb[2:])
    floor = point_iters * per_image

    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__, "model": Path(args.model).name, "torch_threads": torch.get_num_threads(), "settings": settings,
        "point_iterations": point_iters, "mean_iterations": float(fp.iterations.float().mean()),
        "max_iterations": int(fp.iterations.max()), "converged_share": float(fp.converged.float().mean()),
        "not_converged": int((~fp.converged).sum()), "batched_seconds": batched,
        "batched_seconds_all_runs": times[1:], "fwd_bwd_seconds_per_image_at_batch_n": per_image,
        "floor_seconds": floor, "batched_over_floor": batched / floor,
    }
    if not args.skip_per_point:
        gen = torch.Generator().manual_seed(args.seed)
        x0 = torch.rand((args.n, *shape), generator=gen)
        with torch.no_grad():
            i0 = model(x0.to(args.device)).argmax(1).cpu()
        j0 = (i0 + torch.randint(1, args.num_classes, (args.n,), generator=gen)) % args.num_classes
        _sync(args.device)
        t = time.perf_counter()
        pts, iters, done = ipguard_per_point(model, x0.to(args.device), i0.to(args.device), j0.to(args.device),
                                             args.k, args.lr, args.max_iter)
        _sync(args.device)
        per_point = time.perf_counter() - t
        result |= {"per_point_seconds": per_point, "per_point_point_iterations": int(iters.sum()),
                   "per_point_converged_share": float(done.float().mean()),
                   "batched_speedup_over_per_point": per_point / batched}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
