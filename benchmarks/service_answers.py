"""What a prediction service's input format and an OOD-detecting service do to each fingerprint
method, on a pipeline workspace (issue 12).

    python benchmarks/service_answers.py --workspace . --out benchmarks/results/service_answers_digits.json
    python benchmarks/service_answers.py --workspace ../ws --built-only \
        --out benchmarks/results/service_answers_cifar10_cpu.json

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

For both detectors, what ``ipguard verify`` would say of that service (``msp_service``,
``ae_service``, match-scored sets only): the owner's copy answering its second choice on flagged
inputs, judged against the negatives' match counts (``by_upper_tail``: the pipeline's verdict;
``by_fingerprints``: with verify's check for too few matches, :func:`ipguard.decoys.judge_low_matches`),
then by the decoy check
(the negatives' agreement on the decoys as its calibration; ``verdict``). A verdict of
``independent`` there is the failure the decoys exist to catch.

``--built-only`` runs on a workspace built in part (say the owner, some negatives and the
fingerprint sets), leaving out, and listing, the suspects and sets not built.

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


def service_verdict(owner_out: torch.Tensor, flagged: torch.Tensor, labels: torch.Tensor, negative_counts: list[int],
                    decoy_out: torch.Tensor, decoy_flagged: torch.Tensor, decoy_cal: Any, level: float) -> dict[str, Any]:
    """What ``ipguard verify`` says of the owner's own copy behind the OOD-detecting service: it
    answers the owner's label, or its second choice where the detector flags the input; judged on
    the negatives' match counts, then by the decoy check (:func:`ipguard.decoys.judge_decoys`)."""
    from ipguard.decoys import assess_answers, judge_decoys
    from ipguard.stats import assess, fit_calibration

    def answers(out: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        top2 = out.topk(2, dim=1).indices
        return torch.where(flag, top2[:, 1], top2[:, 0])

    n = int(labels.numel())
    matches = int((answers(owner_out, flagged) == labels).sum())
    cal = fit_calibration(negative_counts, n, level)
    verdict = assess(matches, n, cal, level)
    by_fingerprints = assess_answers(matches, n, cal, level).verdict  # verify's, with its too-few-matches rule
    low = by_fingerprints != verdict.verdict
    decoy_labels = decoy_out.argmax(1)
    agree = int((answers(decoy_out, decoy_flagged) == decoy_labels).sum())
    why = judge_decoys(agree, int(decoy_labels.numel()), decoy_cal, by_fingerprints, level)
    return {"matching_rate": round(matches / n, 4), "p_value": float(f"{verdict.p_value:.3g}"),
            "by_upper_tail": verdict.verdict, "too_few_matches": low, "by_fingerprints": by_fingerprints,
            "decoy_agreement": round(agree / int(decoy_labels.numel()), 4),
            "verdict": "inconclusive" if why is not None and by_fingerprints != "inconclusive" else by_fingerprints}


def reconstruction_error(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each image's mean squared reconstruction error."""
    with torch.no_grad():
        return torch.cat([(net(b) - b).pow(2).flatten(1).mean(1) for b in x.split(512)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("."), help="a workspace after `dvc repro`")
    ap.add_argument("--decoys", type=int, default=50)
    ap.add_argument("--ae-epochs", type=int, default=5, help="the thief's autoencoder: epochs over its images")
    ap.add_argument("--built-only", action="store_true",
                    help="leave out the suspects and sets not built in the workspace (listed in the record)")
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
    suspects, not_built = [], []
    for name, path in suspect_paths(params):
        if args.built_only and name != "owner" and not path.is_file():
            not_built.append(name)
            continue
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
    decoy_msp_flags = natural[decoys] < threshold
    decoy_flagged = float(decoy_msp_flags.float().mean())
    # The decoy check's calibration: how many decoys each negative labels as the owner does.
    from ipguard.decoys import DecoyCalibration

    decoy_labels = owner_test[decoys].argmax(1)
    decoy_cal = DecoyCalibration(int(decoys.numel()), tuple(
        int((logits(model, test.x[decoys]).argmax(1) == decoy_labels).sum()) for _, kind, model in suspects if kind == "negative"))
    ae_start = time.perf_counter()
    ae = train_autoencoder(load_split("other").x, args.ae_epochs)
    ae_seconds = time.perf_counter() - ae_start
    ae_threshold = float(torch.quantile(reconstruction_error(ae, test.x), PASS_SHARE))
    decoy_ae_flags = reconstruction_error(ae, test.x[decoys]) > ae_threshold
    ae_decoys = float(decoy_ae_flags.float().mean())
    rows: list[dict[str, Any]] = []
    sets_not_built = [m for m in params.fingerprint if args.built_only and not fingerprint_path(m).is_file()]
    for method in params.fingerprint:
        if method in sets_not_built:
            continue
        inputs, labels, _, meta = load_fingerprint_set(fingerprint_path(method))
        rounded = (inputs * 255).round() / 255
        owner_out = logits(owner, inputs)
        msp_flags = owner_out.softmax(1).max(1).values < threshold
        ae_flags = reconstruction_error(ae, inputs) > ae_threshold
        flagged, ae_flagged = float(msp_flags.float().mean()), float(ae_flags.float().mean())
        change: dict[str, list[float]] = {"positive": [], "negative": []}
        moved, owner_rounded, negative_counts = 0, None, []
        for name, kind, model in suspects:
            hits = logits(model, inputs).argmax(1) == labels
            exact = float(hits.float().mean())
            approx = float((logits(model, rounded).argmax(1) == labels).float().mean())
            moved += exact != approx
            if kind == "owner":
                owner_rounded = approx
            else:
                change[kind].append(approx - exact)
            if kind == "negative":
                negative_counts.append(int(hits.sum()))
        services = {}
        if meta.get("score", "match") == "match":  # SAC's scores come from outputs, not these labels
            decoy_out = owner_test[decoys]
            services = {
                "msp_service": service_verdict(owner_out, msp_flags, labels, negative_counts, decoy_out, decoy_msp_flags,
                                               decoy_cal, params.evaluate.level),
                "ae_service": service_verdict(owner_out, ae_flags, labels, negative_counts, decoy_out, decoy_ae_flags,
                                              decoy_cal, params.evaluate.level),
            }
        rows.append({
            "method": method, "score": meta.get("score", "match"), "points": int(labels.numel()),
            "uint8_owner_matching_rate": owner_rounded,
            **{f"uint8_mean_change_{kind}s": round(sum(v) / len(v), 4) if v else None for kind, v in change.items()},
            "uint8_share_of_suspects_changed": round(moved / len(suspects), 4),
            "ood_flagged_share": round(flagged, 4),
            "ae_flagged_share": round(ae_flagged, 4),
            **services,
        })
    record = {"benchmark": "service_answers", "experiment": params.experiment.name, "suspects": len(suspects),
              **({"suspects_not_built": not_built} if not_built else {}),
              **({"sets_not_built": sets_not_built} if sets_not_built else {}),
              "msp_threshold": round(threshold, 4), "natural_flagged_share": round(1 - PASS_SHARE, 4), "decoys": args.decoys,
              "decoys_flagged_share": round(decoy_flagged, 4), "decoy_calibration": decoy_cal.to_dict(),
              "ae_epochs": args.ae_epochs,
              "ae_threshold": round(ae_threshold, 6), "ae_decoys_flagged_share": round(ae_decoys, 4),
              "ae_train_seconds": round(ae_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
              "methods": rows}
    print(json.dumps(record, indent=1))
    if out_path:
        out_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
