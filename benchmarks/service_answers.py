"""What a prediction service's input format and an OOD-detecting service do to each fingerprint
method, on a pipeline workspace (issue 12).

    python benchmarks/service_answers.py --workspace . --out benchmarks/results/service_answers_digits.json

For every fingerprint set of the workspace (``fingerprints/raw/``) and every suspect of its
experiment (owner, negatives, post-processed copies):

- ``--uint8``: the matching rate when the points are rounded to 8-bit images (what a service that
  takes images sees) against the exact float32 points; reported per method as the owner's rounded
  matching rate, the mean change over positives and over negatives, and the share of suspects
  whose matching rate moved at all.
- an OOD-detecting service (the issue's "a copy that answers a wrong label whenever its input
  looks unlike natural images"): the owner's own copy behind a maximum-softmax-probability
  detector (Hendrycks & Gimpel, ICLR 2017) whose threshold lets 95 % of the natural test images
  through; reported per method as the share of its points the detector flags (each a wrong
  answer for the thief's copy), against the 5 % of natural images, and the share of decoys
  (the most confidently labelled test images, as ``ipguard fingerprint --decoys`` keeps) it flags.

- the same service with an autoencoder's reconstruction error as its detector (the issue's other
  example): the thief trains a small convolutional autoencoder on its own natural images (the
  ``other`` split, ``--ae-epochs`` epochs, seeded) and flags inputs whose mean squared
  reconstruction error is above that of 95 % of the natural test images. Reported per method as
  ``ae_flagged_share``, with the decoys' share flagged and the seconds the thief's training took.

SAC sets are scored on outputs, not on labels, so only their labels' share flagged is meaningful
here; they are listed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

PASS_SHARE = 0.95  # natural test images the detector lets through


def autoencoder(channels: int) -> torch.nn.Module:
    """A small convolutional autoencoder (two stride-2 stages down to a quarter of the side, and back)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1), nn.Sigmoid(),
    )


def train_autoencoder(x: torch.Tensor, epochs: int, batch: int = 128, seed: int = 0) -> torch.nn.Module:
    """The thief's detector, trained on its natural images ``x`` (pixels in [0, 1]) to reconstruct them."""
    torch.manual_seed(seed)
    net = autoencoder(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(batch):
            loss = torch.nn.functional.mse_loss(net(x[idx]), x[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def reconstruction_error(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each image's mean squared reconstruction error."""
    with torch.no_grad():
        return torch.cat([(net(b) - b).pow(2).flatten(1).mean(1) for b in x.split(512)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("."), help="a workspace after `dvc repro`")
    ap.add_argument("--decoys", type=int, default=50)
    ap.add_argument("--ae-epochs", type=int, default=5, help="the thief's autoencoder: epochs over its images")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out_path = args.out.resolve() if args.out else None
    os.chdir(args.workspace)
    from ipguard.config import load_params
    from ipguard.io import load_fingerprint_set
    from ipguard.models import load_model, logits
    from ipguard.stages.common import fingerprint_path, load_split, suspect_paths

    params = load_params("params.yaml")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    suspects = []
    for name, path in suspect_paths(params):
        model, meta = load_model(str(path))
        kind = "owner" if name == "owner" else meta.get("role", "negative")
        suspects.append((name, "owner" if name == "owner" else "positive" if kind == "positive" else "negative", model))
    owner = suspects[0][2]
    test = load_split("test")
    owner_test = logits(owner, test.x)  # once: both the detector's threshold and the decoys come from it
    natural = owner_test.softmax(1).max(1).values
    threshold = float(torch.quantile(natural, 1 - PASS_SHARE))
    margin = owner_test.topk(2, dim=1).values
    decoys = torch.argsort(margin[:, 0] - margin[:, 1], descending=True, stable=True)[: args.decoys]
    decoy_flagged = float((natural[decoys] < threshold).float().mean())
    ae_start = time.perf_counter()
    ae = train_autoencoder(load_split("other").x, args.ae_epochs)
    ae_seconds = time.perf_counter() - ae_start
    ae_threshold = float(torch.quantile(reconstruction_error(ae, test.x), PASS_SHARE))
    ae_decoys = float((reconstruction_error(ae, test.x[decoys]) > ae_threshold).float().mean())
    rows: list[dict[str, Any]] = []
    for method in params.fingerprint:
        inputs, labels, _, meta = load_fingerprint_set(fingerprint_path(method))
        rounded = (inputs * 255).round() / 255
        with torch.no_grad():
            flagged = float((logits(owner, inputs).softmax(1).max(1).values < threshold).float().mean())
        ae_flagged = float((reconstruction_error(ae, inputs) > ae_threshold).float().mean())
        change: dict[str, list[float]] = {"positive": [], "negative": []}
        moved, owner_rounded = 0, None
        for name, kind, model in suspects:
            exact = float((logits(model, inputs).argmax(1) == labels).float().mean())
            approx = float((logits(model, rounded).argmax(1) == labels).float().mean())
            moved += exact != approx
            if kind == "owner":
                owner_rounded = approx
            else:
                change[kind].append(approx - exact)
        rows.append({
            "method": method, "score": meta.get("score", "match"), "points": int(labels.numel()),
            "uint8_owner_matching_rate": owner_rounded,
            "uint8_mean_change_positives": round(sum(change["positive"]) / max(1, len(change["positive"])), 4),
            "uint8_mean_change_negatives": round(sum(change["negative"]) / max(1, len(change["negative"])), 4),
            "uint8_share_of_suspects_changed": round(moved / len(suspects), 4),
            "ood_flagged_share": round(flagged, 4),
            "ae_flagged_share": round(ae_flagged, 4),
        })
    record = {"benchmark": "service_answers", "experiment": params.experiment.name, "suspects": len(suspects),
              "msp_threshold": round(threshold, 4), "natural_flagged_share": round(1 - PASS_SHARE, 4), "decoys": args.decoys,
              "decoys_flagged_share": round(decoy_flagged, 4), "ae_epochs": args.ae_epochs,
              "ae_threshold": round(ae_threshold, 6), "ae_decoys_flagged_share": round(ae_decoys, 4),
              "ae_train_seconds": round(ae_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
              "methods": rows}
    print(json.dumps(record, indent=1))
    if out_path:
        out_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
