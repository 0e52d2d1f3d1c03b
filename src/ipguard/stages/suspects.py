"""The suspects' dev/test parts and the evaluate config they rest on (stages match, evaluate, effects).

Kept apart from :mod:`ipguard.stages.common`, which every stage imports: the evaluation code it
needs must not become a dependency of the training stages (DVC would retrain on every change).
"""

from __future__ import annotations

from ipguard.config import Params
from ipguard.errors import ConfigError


def check_evaluate(params: Params) -> None:
    """``evaluate.split`` and ``evaluate.bootstrap`` hold usable values (else a ConfigError naming the key)."""
    ev = params.evaluate
    if not 0.0 < ev.split.dev_fraction < 1.0:
        raise ConfigError(f"evaluate.split.dev_fraction: must lie in (0, 1), got {ev.split.dev_fraction}")
    if ev.bootstrap.resamples < 1:
        raise ConfigError(f"evaluate.bootstrap.resamples: need at least 1, got {ev.bootstrap.resamples}")
    if not 0.0 < ev.bootstrap.confidence < 1.0:
        raise ConfigError(f"evaluate.bootstrap.confidence: must lie in (0, 1), got {ev.bootstrap.confidence}")
    if not 0.0 <= ev.max_fpr <= 1.0:
        raise ConfigError(f"evaluate.max_fpr: must lie in [0, 1], got {ev.max_fpr}")
    unknown = [m for m in ev.combine if m not in params.fingerprint]
    if unknown:
        raise ConfigError(f"evaluate.combine: '{unknown[0]}' is not a fingerprint entry (entries: {', '.join(params.fingerprint)})")
    if len(ev.combine) == 1 or len(set(ev.combine)) != len(ev.combine):
        raise ConfigError(f"evaluate.combine: name two or more different fingerprint entries (or none), got {list(ev.combine)}")
    for i, t in enumerate(ev.target):
        if not 0.0 < t.auc <= 1.0:
            raise ConfigError(f"evaluate.target[{i}].auc: must lie in (0, 1], got {t.auc}")
        if not t.families:
            raise ConfigError(f"evaluate.target[{i}].families: name at least one family of post-processed copies")


def suspect_parts(params: Params, suspects: list[tuple[str, str, str]]) -> dict[str, str]:
    """``evaluate.split`` applied to ``(name, kind, family)`` of the suspects: name -> ``dev``/``test``
    (the owner and anything that is not a positive or a negative get ``none``)."""
    from ipguard.evaluate import split_suspects

    check_evaluate(params)
    cfg = params.evaluate.split
    scored = [s for s in suspects if s[1] in {"positive", "negative"}]
    parts = split_suspects(scored, cfg.dev_fraction, cfg.seed)
    return {name: parts.get(name, "none") for name, _, _ in suspects}
