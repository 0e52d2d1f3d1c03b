"""Stage ``effects``: how the margin k and the number of points n change the verdicts.

k: fresh fingerprint sets of the ``effects.method`` entry at each k of ``effects.k`` (the trained
models are reused). n: the first n points of every fingerprint set of the pipeline, so no point is
generated again. Reads ``effects``, ``fingerprint``, ``dataset``, ``evaluate``; writes
``reports/<experiment>/effects.{json,md}`` and ``figures_effects/``.
"""

from __future__ import annotations

import torch

from ipguard.config import Params
from ipguard.errors import ConfigError
from ipguard.evaluate import summarize
from ipguard.fingerprint import RESERVED_KEYS, check_method, generate
from ipguard.io import load_fingerprint_file, write_json, write_text
from ipguard.models import load_model, predict
from ipguard.report import md_table, save_figure
from ipguard.stages.common import fingerprint_path, load_pool, reports_dir, run_stage, suspect_paths
from ipguard.stages.match import KIND
from ipguard.tracking import stage_run


def _row(agree: dict[str, torch.Tensor], kinds: dict[str, str], max_fpr: float) -> dict[str, float]:
    """Metrics from per-point agreement (suspect -> bool vector over the points)."""
    pos = [float(a.float().mean()) for s, a in agree.items() if kinds[s] == "positive"]
    neg = [float(a.float().mean()) for s, a in agree.items() if kinds[s] == "negative"]
    m = summarize(pos, neg, max_fpr)
    return {"ARUC": m["aruc"], "AUC": m["auc"], "TPR@FPR": m["tpr_at_fpr"], "mean MR positives": sum(pos) / len(pos),
            "min MR positives": m["min_positive_mr"], "mean MR negatives": sum(neg) / len(neg),
            "max MR negatives": m["max_negative_mr"]}


def effects(params: Params, key: str | None = None) -> None:
    cfg = params.effects
    if cfg.method not in params.fingerprint:
        raise ConfigError(f"effects.method: '{cfg.method}' is not an entry of fingerprint")
    entry = dict(params.fingerprint[cfg.method])
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    check_method(entry["method"], kwargs, f"fingerprint.{cfg.method}")
    if "k" not in kwargs:
        raise ConfigError(f"effects.method: '{cfg.method}' has no margin k to vary")
    models = {}
    kinds = {}
    for name, path in suspect_paths(params):
        models[name], meta = load_model(str(path), params.runtime.device)
        kinds[name] = KIND[meta["role"]]
    owner = models[Params.OWNER]
    ds, max_fpr, batch = params.dataset, params.evaluate.max_fpr, params.evaluate.batch_size
    pool = load_pool(entry.get("pool", "test"))
    k_rows = []
    for k in cfg.k:
        fp = generate(entry["method"], owner, pool, tuple(ds.input_shape), ds.num_classes, **{**kwargs, "k": float(k)})
        agree = {s: predict(m, fp.inputs, batch) == fp.labels for s, m in models.items() if s != Params.OWNER}
        stats = fp.stats()
        k_rows.append({"k": float(k), **_row(agree, kinds, max_fpr), "converged share": stats.get("converged_share"),
                       "mean iterations": stats.get("mean_iterations"), "seconds": stats["seconds"]})
    n_rows = []
    for method in params.fingerprint:
        inputs, labels, _ = load_fingerprint_file(fingerprint_path(method))
        agree = {s: predict(m, inputs, batch) == labels for s, m in models.items() if s != Params.OWNER}
        for n in sorted({*cfg.n, int(labels.numel())}):
            if n <= labels.numel():
                n_rows.append({"method": method, "n": n, **_row({s: a[:n] for s, a in agree.items()}, kinds, max_fpr)})
    out = reports_dir(params)
    write_json(out / "effects.json", {"k": [{kk: v for kk, v in r.items() if kk != "seconds"} for r in k_rows], "n": n_rows})
    fpr = f"TPR@{max_fpr:.0%}FPR"
    rename = lambda rows: [{(fpr if k == "TPR@FPR" else k): v for k, v in r.items()} for r in rows]  # noqa: E731
    text = (f"# Effect of k and n: `{params.experiment.name}`\n\n"
            f"## Margin k (`{cfg.method}`, fresh points at each k; models reused)\n\n" + md_table(rename(k_rows)) +
            "\n## Number of points n (the first n points of each set; nothing regenerated)\n\n" + md_table(rename(n_rows)))
    write_text(out / "effects.md", text)
    keys = ("k", "ARUC", "mean MR positives", "mean MR negatives")
    plot = "".join(",".join(f"{r[key]:.6g}" for key in keys) + "\n" for r in k_rows)
    write_text(out / "plots" / "effects_k.csv", ",".join(keys) + "\n" + plot)
    _figure(k_rows, out / "figures_effects" / "aruc_vs_k.png", cfg.method)
    with stage_run(params.tracking, params.experiment.name, "effects", {"stage": "effects"}) as run:
        run.log_params({"effects": {"method": cfg.method, "k": cfg.k, "n": cfg.n}})
        for step, r in enumerate(k_rows):
            run.log_metrics({"k": r["k"], "aruc": r["ARUC"], "auc": r["AUC"]}, step=step)
        run.log_artifact(out / "effects.md")
        run.log_artifact(out / "figures_effects" / "aruc_vs_k.png")
        run.log_artifact(out / "plots" / "effects_k.csv", "plots")


def _figure(rows: list[dict[str, float]], path: object, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ks = [max(r["k"], 1e-2) for r in rows]
    ax.plot(ks, [r["ARUC"] for r in rows], marker="o", label="ARUC")
    ax.plot(ks, [r["mean MR positives"] for r in rows], marker="^", label="mean MR positives")
    ax.plot(ks, [r["mean MR negatives"] for r in rows], marker="v", label="mean MR negatives")
    ax.set_xscale("log")
    ax.set_xlabel("margin k (logits; 0 drawn at 0.01)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{method}: robustness vs uniqueness over k", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)  # type: ignore[arg-type]


def main() -> None:
    run_stage(__doc__ or "", effects)


if __name__ == "__main__":
    main()
