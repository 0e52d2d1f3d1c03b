"""Matching a suspect against a fingerprint set, by the score the set names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ipguard.models import logits, predict
from ipguard.scores import label_pair_similarity, sac_similarity


@dataclass(frozen=True)
class Match:
    matches: int
    n: int

    @property
    def matching_rate(self) -> float:
        return self.matches / self.n if self.n else 0.0


def match(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> Match:
    """How many fingerprint points ``model`` labels as the owner did."""
    predicted = predict(model, inputs, batch_size)
    return Match(matches=int((predicted == labels).sum()), n=int(labels.numel()))


@dataclass(frozen=True)
class Score:
    """A suspect's score on one set (higher: more like the owner) and, for ``match`` sets, its count."""

    kind: str
    score: float
    n: int
    matches: int | None = None


def score(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, kind: str = "match",
          outputs: torch.Tensor | None = None, batch_size: int = 512) -> Score:
    """The suspect's score on a set of kind ``kind`` (``match``, ``sac`` or ``sac_label``)."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind '{kind}' (known: {', '.join(SCORE_KINDS)})")
    if kind == "sac":
        if outputs is None:
            raise ValueError("a 'sac' set needs the owner's outputs")
        suspect = logits(model, inputs, batch_size)
        return score_answers(kind, labels, suspect.argmax(1), suspect, outputs)
    return score_answers(kind, labels, predict(model, inputs, batch_size), None, outputs)


SCORE_KINDS = ("match", "sac", "sac_label")


def score_answers(kind: str, labels: torch.Tensor, predicted: torch.Tensor, suspect_logits: torch.Tensor | None,
                  outputs: torch.Tensor | None = None) -> Score:
    """The score of a suspect that answered ``predicted`` labels (and ``suspect_logits``, where it
    gives scores) on a set of kind ``kind``: the same whether the answers came from a file or a
    service."""
    n = int(labels.numel())
    if kind == "match":
        matches = int((predicted == labels).sum())
        return Score(kind, matches / n if n else 0.0, n, matches)
    if kind == "sac_label":
        return Score(kind, label_pair_similarity(labels, predicted), n)
    if kind == "sac":
        if outputs is None:
            raise ValueError("a 'sac' set needs the owner's outputs")
        if suspect_logits is None:
            raise ValueError("a 'sac' set needs the suspect's scores (logits), and it answered labels only; "
                             "use a 'sac_label' set for a suspect that returns labels")
        if suspect_logits.shape != outputs.shape:
            raise ValueError(f"the suspect answers {suspect_logits.shape[1]} classes, the owner {outputs.shape[1]}")
        if not bool(torch.isfinite(suspect_logits).all()):
            raise ValueError("the suspect's outputs on the set are not finite")
        return Score(kind, sac_similarity(outputs, suspect_logits), n)
    raise ValueError(f"unknown score kind '{kind}' (known: {', '.join(SCORE_KINDS)})")
