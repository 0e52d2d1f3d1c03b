"""Stage ``effects``: the margin k of each IPGuard variant chosen on dev, and what n costs.

For each entry of ``effects.methods`` (default: every fingerprint entry of method ``ipguard``,
i.e. every start and target in the experiment) and each k of ``effects.k``, a fresh fingerprint
set is generated (the trained models are reused; at the entry's own k the pipeline's set is
reused, which is the same set), and its first n points for each n of ``effects.n`` (and the
set's own n) are scored on the dev and on the test part of the suspects (``evaluate.split``).
The choice per method is made on dev only (:func:`choose`: k, at the set's own n; across the
methods, the start and target); the test part gives the numbers reported at the chosen
setting, with bootstrap intervals. The first n points of every set of the
pipeline are scored too (test part; nothing regenerated).

Reads ``effects``, ``fingerprint``, ``dataset``, ``evaluate``, ``zoo``, ``postprocess``; writes
``reports/<experiment>/effects.{json,md}``, ``figures_effects/aruc_vs_k.png`` and the DVC plot
files ``plots/effects_k/<method>.csv``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ipguard.config import Params
from ipguard.errors import ConfigError
from ipguard.evaluate import bootstrap_intervals, summarize, tpr_label
from ipguard.fingerprint import RESERVED_KEYS, check_method, generate
from ipguard.io import load_fingerprint_file, write_json, write_text
from ipguard.models import load_model, predict
from ipguard.report import md_table, save_figure
from ipguard.stats import verdicts_at_n
from ipguard.stages.common import (
    check_pool,
    fingerprint_path,
    load_pool,
    reports_dir,
    run_stage,
    suspect_paths,
)
from ipguard.stages.match import KIND
from ipguard.stages.suspects import check_evaluate, suspect_parts
from ipguard.tracking import stage_run

RULE = ("per method, the k with the highest dev ARUC on the whole set (its own n); ties go to the larger k "
        "(more room for post-processing that dev does not hold). n stays the set's own: a prefix only adds "
        "noise to every matching rate, so a smaller n can beat the whole set on a few dev suspects by chance "
        "only, and the maximum over n would pick that chance; the n table shows what fewer points cost")


def rates_by_part(agree: Mapping[str, torch.Tensor], kinds: Mapping[str, str], parts: Mapping[str, str],
                  part: str) -> tuple[list[float], list[float]]:
    """Matching rates of the positives and of the negatives of ``part`` from per-point agreement."""
    rate = lambda a: int(a.sum()) / int(a.numel())  # noqa: E731 - exact, as the match stage's rates
    pos = [rate(a) for s, a in agree.items() if kinds[s] == "positive" and parts[s] == part]
    neg = [rate(a) for s, a in agree.items() if kinds[s] == "negative" and parts[s] == part]
    return pos, neg


def part_metrics(pos: Sequence[float], neg: Sequence[float], max_fpr: float) -> dict[str, float] | None:
    """ARUC, AUC, TPR and the matching rates of one part; ``None`` when it lacks positives or negatives."""
    if not pos or not neg:
        return None
    m = summarize(pos, neg, max_fpr)
    return {"aruc": m["aruc"], "auc": m["auc"], "tpr_at_fpr": m["tpr_at_fpr"], "tpr_fpr_bound": m["tpr_fpr_bound"],
            "mean_mr_positives": sum(pos) / len(pos), "min_mr_positives": m["min_positive_mr"],
            "mean_mr_negatives": sum(neg) / len(neg), "max_mr_negatives": m["max_negative_mr"],
            "positives": float(len(pos)), "negatives": float(len(neg))}


def choose(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """One method's row with the best dev ARUC among those at the set's full n; ties: larger k (:data:`RULE`).

    Rows without dev metrics (a dev part with no positive or no negative) cannot be chosen.
    """
    full = {}
    for r in rows:
        if r["k"] not in full or r["n"] > full[r["k"]]["n"]:
            full[r["k"]] = r
    scored = [r for r in full.values() if r.get("dev") is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (round(r["dev"]["aruc"], 12), r["k"]))


def _entry(params: Params, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if method not in params.fingerprint:
        raise ConfigError(f"effects.methods: '{method}' is not an entry of fingerprint")
    entry = dict(params.fingerprint[method])
    kwargs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    check_method(entry["method"], kwargs, f"fingerprint.{method}")
    if "k" not in kwargs:
        raise ConfigError(f"effects.methods: '{method}' has no margin k to vary")
    check_pool(params, str(entry.get("pool", "test")), f"fingerprint.{method}.pool")
    return entry, kwargs


def effect_methods(params: Params) -> list[str]:
    """``effects.methods``, or every fingerprint entry of method ``ipguard`` when it is empty."""
    methods = list(params.effects.methods) or [k for k, e in params.fingerprint.items() if e.get("method") == "ipguard"]
    if not methods:
        raise ConfigError("effects.methods: empty, and no fingerprint entry of method 'ipguard' to default to")
    return methods


def effects(params: Params, key: str | None = None) -> None:
    cfg = params.effects
    check_evaluate(params)
    methods = effect_methods(params)
    entries = {m: _entry(params, m) for m in methods}
    models, kinds, families = {}, {}, {}
    for name, path in suspect_paths(params):
        models[name], meta = load_model(str(path), params.runtime.device)
        kinds[name], families[name] = KIND[meta["role"]], str(meta["family"])
    parts = suspect_parts(params, [(s, kinds[s], families[s]) for s in models])
    owner = models[Params.OWNER]
    ds, ev = params.dataset, params.evaluate
    max_fpr, batch, boot = ev.max_fpr, ev.batch_size, ev.bootstrap
    suspects = [s for s in models if s != Params.OWNER]

    grid: list[dict[str, Any]] = []
    rates: dict[tuple[str, float, int], tuple[list[float], list[float]]] = {}
    for method, (entry, kwargs) in entries.items():
        pool = load_pool(entry.get("pool", "test"))
        own = load_fingerprint_file(fingerprint_path(method)) if fingerprint_path(method).is_file() else None
        for k in cfg.k:
            if float(k) == float(kwargs["k"]) and own is not None and own[2].get("config") == entry:
                # The pipeline's own set: same method, settings and seed, hence the same points.
                inputs, labels, _ = own
                stats = json.loads(fingerprint_path(method).with_suffix(".json").read_text()).get("stats", {})
                reused = True
            else:
                fp = generate(entry["method"], owner, pool, tuple(ds.input_shape), ds.num_classes,
                              where=f"fingerprint.{method}", **{**kwargs, "k": float(k)})
                inputs, labels, stats, reused = fp.inputs, fp.labels, fp.stats(), False
            agree = {s: predict(models[s], inputs, batch) == labels for s in suspects}
            size = int(labels.numel())
            for n in sorted({*cfg.n, size}):
                if n > size:
                    continue
                prefix = {s: a[:n] for s, a in agree.items()}
                row: dict[str, Any] = {"method": method, "k": float(k), "n": n,
                                       "converged_share": stats.get("converged_share"),
                                       "mean_iterations": stats.get("mean_iterations"),
                                       "seconds": None if reused else stats.get("seconds"), "reused": reused}
                for part in ("dev", "test"):
                    pos, neg = rates_by_part(prefix, kinds, parts, part)
                    row[part] = part_metrics(pos, neg, max_fpr)
                    if part == "test":
                        rates[(method, float(k), n)] = (pos, neg)
                grid.append(row)

    chosen: dict[str, Any] = {}
    for method in methods:
        best = choose([r for r in grid if r["method"] == method])
        if best is None:
            continue
        test = dict(best["test"]) if best["test"] is not None else None
        pos, neg = rates[(method, best["k"], best["n"])]
        if test is not None:
            test.update(bootstrap_intervals(pos, neg, max_fpr, boot.resamples, boot.confidence, boot.seed))
        chosen[method] = {"k": best["k"], "n": best["n"], "dev": best["dev"], "test": test}

    n_rows = []
    for method in params.fingerprint:
        inputs, labels, fmeta = load_fingerprint_file(fingerprint_path(method))
        if fmeta.get("score", "match") != "match":
            continue  # SAC's similarity is over pairs of the whole set, not a count that a prefix cuts
        agree = {s: predict(models[s], inputs, batch) == labels for s in suspects}
        for n in sorted({*cfg.n, int(labels.numel())}):
            if n <= labels.numel():
                prefix = {s: a[:n] for s, a in agree.items()}
                pos, neg = rates_by_part(prefix, kinds, parts, "test")
                # Calibrated as the report's verdicts are: on every negative, dev and test.
                counts = [int(a.sum()) for s, a in prefix.items() if kinds[s] == "negative"]
                test_pos = [int(a.sum()) for s, a in prefix.items() if kinds[s] == "positive" and parts[s] == "test"]
                verdicts = verdicts_at_n(counts, test_pos, n, ev.level) if counts else None
                n_rows.append({"method": method, "n": n, "test": part_metrics(pos, neg, max_fpr), "verdicts": verdicts})

    out = reports_dir(params)
    members = {part: {kind: [s for s in suspects if parts[s] == part and kinds[s] == kind] for kind in ("positive", "negative")}
               for part in ("dev", "test")}
    split = {"dev_fraction": ev.split.dev_fraction, "seed": ev.split.seed, **members}
    write_json(out / "effects.json", {
        "max_fpr": max_fpr, "rule": RULE, "split": split, "chosen": chosen,
        "grid": [{kk: v for kk, v in r.items() if kk not in {"seconds", "reused"}} for r in grid], "n": n_rows,
    })
    write_text(out / "effects.md", effects_markdown(params.experiment.name, methods, grid, chosen, n_rows, members,
                                                    max_fpr, boot.confidence, ev.level))
    shutil.rmtree(out / "plots" / "effects_k", ignore_errors=True)
    keys = ("k", "ARUC dev", "ARUC test", "mean MR positives test", "mean MR negatives test")
    for method in methods:
        rows = k_curve(grid, method)
        body = "".join(",".join(_num(r[key]) for key in keys) + "\n" for r in rows)
        write_text(out / "plots" / "effects_k" / f"{method}.csv", ",".join(keys) + "\n" + body)
    _figure(grid, chosen, methods, out / "figures_effects" / "aruc_vs_k.png")
    with stage_run(params.tracking, params.experiment.name, "effects", {"stage": "effects"}) as run:
        run.log_params({"effects": {"methods": methods, "k": cfg.k, "n": cfg.n}})
        for method in methods:
            for step, r in enumerate(k_curve(grid, method)):
                run.log_metrics({f"{method}.k": r["k"], f"{method}.dev_aruc": r["ARUC dev"], f"{method}.test_aruc": r["ARUC test"]},
                                step=step)
            if method in chosen:
                run.log_metrics({f"{method}.chosen_k": chosen[method]["k"], f"{method}.chosen_n": float(chosen[method]["n"])})
        run.log_artifact(out / "effects.md")
        run.log_artifact(out / "effects.json")
        run.log_artifact(out / "figures_effects" / "aruc_vs_k.png")
        run.log_artifact(out / "plots" / "effects_k", "plots/effects_k")


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def k_curve(grid: Sequence[Mapping[str, Any]], method: str) -> list[dict[str, Any]]:
    """One method's rows at its full set size, one per k: dev and test ARUC, test mean matching rates."""
    rows = [r for r in grid if r["method"] == method]
    full = {}
    for r in rows:
        if r["k"] not in full or r["n"] > full[r["k"]]["n"]:
            full[r["k"]] = r
    get = lambda r, part, key: r[part][key] if r[part] is not None else None  # noqa: E731
    return [{"k": k, "n": r["n"], "ARUC dev": get(r, "dev", "aruc"), "ARUC test": get(r, "test", "aruc"),
             "mean MR positives test": get(r, "test", "mean_mr_positives"),
             "mean MR negatives test": get(r, "test", "mean_mr_negatives")} for k, r in sorted(full.items())]


def _display(m: Mapping[str, Any] | None, tpr: str, interval: bool = False) -> dict[str, Any]:
    if m is None:
        return {"ARUC": None, "AUC": None, tpr: None}
    if interval and "aruc_lo" in m:
        fmt = lambda key: f"{m[key]:.3f} [{m[key + '_lo']:.2f}, {m[key + '_hi']:.2f}]"  # noqa: E731
        head = {"ARUC": fmt("aruc"), "AUC": fmt("auc"), tpr: fmt("tpr_at_fpr")}
    else:
        head = {"ARUC": m["aruc"], "AUC": m["auc"], tpr: m["tpr_at_fpr"]}
    return {**head, "mean MR positives": m["mean_mr_positives"], "min MR positives": m["min_mr_positives"],
            "mean MR negatives": m["mean_mr_negatives"], "max MR negatives": m["max_mr_negatives"]}


def effects_markdown(experiment: str, methods: Sequence[str], grid: Sequence[Mapping[str, Any]],
                     chosen: Mapping[str, Any], n_rows: Sequence[Mapping[str, Any]],
                     members: Mapping[str, Mapping[str, list[str]]], max_fpr: float, confidence: float,
                     level: float = 0.01) -> str:
    """effects.md: the parts, the choice made on dev with its test metrics, the dev table, the n table
    and the queries a verdict needs."""
    n_dev, n_test = len(members["dev"]["negative"]), len(members["test"]["negative"])
    tpr_dev = tpr_label(max_fpr, n_dev) if n_dev else "TPR"
    tpr_test = tpr_label(max_fpr, n_test) if n_test else "TPR"
    text = [f"# k chosen on dev: `{experiment}`\n",
            "The suspects are split into a **dev** part, on which k is chosen for each method (and, across the "
            "methods, the start and target), and a **test** part, on which the chosen settings are measured "
            "(`evaluate.split`; the same parts as `report.md`).\n"]
    text.append(md_table([{"part": part, "positives": ", ".join(m["positive"]) or "–", "negatives": ", ".join(m["negative"]) or "–"}
                          for part, m in members.items()]))
    text.append(f"\n## Chosen on dev, measured on test\n\nRule: {RULE}. Test metrics with {confidence:.0%} percentile "
                f"bootstrap intervals; {tpr_test}: with {n_test} test negatives the TPR is taken at the FPR they can resolve.\n")
    rows = []
    for method in methods:
        c = chosen.get(method)
        shown = _display(c["test"] if c else None, tpr_test, interval=True)
        rows.append({"method": method, "k": c["k"] if c else None, "n": c["n"] if c else None,
                     "dev ARUC": c["dev"]["aruc"] if c else None,
                     **{(f"test {key}" if key in {"ARUC", "AUC", tpr_test} else f"{key} (test)"): v for key, v in shown.items()}})
    text.append(md_table(rows))
    candidates = [m for m in methods if m in chosen]
    if candidates:
        best = max(candidates, key=lambda m: (round(chosen[m]["dev"]["aruc"], 12), -methods.index(m)))
        text.append(f"\nBest on dev over the methods: `{best}` (k = {chosen[best]['k']:g}, n = {chosen[best]['n']}; "
                    "ties go to the earlier method of `effects.methods`).\n")
    else:
        text.append("\nNothing chosen: the dev part lacks positives or negatives.\n")
    text.append(f"\n## Dev part: every setting (fresh points at each k, the first n points of each set; models reused)\n\n"
                f"{tpr_dev}. Seconds: generation of the set (– where the pipeline's own set was reused).\n")
    rows = []
    for r in grid:
        rows.append({"method": r["method"], "k": r["k"], "n": r["n"], **_display(r["dev"], tpr_dev),
                     "converged share": r["converged_share"], "mean iterations": r["mean_iterations"], "seconds": r["seconds"]})
    text.append(md_table(rows))
    text.append(f"\n## Number of points n, every set of the pipeline (test part; the first n points, nothing regenerated)\n\n{tpr_test}.\n")
    text.append(md_table([{"method": r["method"], "n": r["n"], **_display(r["test"], tpr_test),
                           "p of a full match": (r.get("verdicts") or {}).get("floor_p"),
                           "test positives called pirated": (r.get("verdicts") or {}).get("positives_pirated")}
                          for r in n_rows]))
    text.append(f"\n## Queries for a verdict at level {level:g} (the n above)\n\n"
                "Calibrated at each n on every negative (dev and test), as the report's verdicts are. "
                "*Fewest for any verdict*: the smallest n at which a suspect matching every point (the owner) "
                "is called pirated; below it no suspect can be. *Fewest for the most positives*: the smallest n "
                "at which the share of test positives called pirated reaches its largest value over the n "
                "above. SAC's sets are left out (their score is over the pairs of the whole set).\n")
    text.append(md_table(queries_for_verdict(n_rows)))
    return "\n".join(text)


def queries_for_verdict(n_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method, the fewest points (queries) of the n table that give a verdict (see effects.md)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in n_rows):
        rows = sorted((r for r in n_rows if r["method"] == method and r.get("verdicts")), key=lambda r: r["n"])
        any_n = next((r["n"] for r in rows if r["verdicts"]["owner_verdict"] == "pirated"), None)
        shares = [r["verdicts"]["positives_pirated"] for r in rows if r["verdicts"]["positives_pirated"] is not None]
        top = max(shares) if shares else None
        most_n = next((r["n"] for r in rows if top and r["verdicts"]["positives_pirated"] == top), None)
        out.append({"method": method, "fewest for any verdict": any_n, "fewest for the most positives": most_n,
                    "largest share of test positives called pirated": top})
    return out


def _figure(grid: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = k_curve(grid, method)
        ks = [max(r["k"], 1e-2) for r in rows]
        for key, marker in (("ARUC dev", "o"), ("ARUC test", "s"), ("mean MR positives test", "^"), ("mean MR negatives test", "v")):
            ys = [float("nan") if r[key] is None else r[key] for r in rows]
            ax.plot(ks, ys, marker=marker, label=key, ls="--" if "MR" in key else "-")
        if method in chosen:
            ax.axvline(max(chosen[method]["k"], 1e-2), color="grey", lw=0.8, ls=":", label="chosen on dev")
        ax.set_xscale("log")
        ax.set_xlabel("margin k (logits; 0 drawn at 0.01)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{method}: ARUC over k (full set)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    run_stage(__doc__ or "", effects)


if __name__ == "__main__":
    main()
