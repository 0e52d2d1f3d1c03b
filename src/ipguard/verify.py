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
    n = int(labels.numel())
    if kind == "match":
        m = match(model, inputs, labels, batch_size)
        return Score(kind, m.matching_rate, n, m.matches)
    if kind == "sac_label":
        return Score(kind, label_pair_similarity(labels, predict(model, inputs, batch_size)), n)
    if kind == "sac":
        if outputs is None:
            raise ValueError("a 'sac' set needs the owner's outputs")
        suspect = logits(model, inputs, batch_size)
        if suspect.shape != outputs.shape:
            raise ValueError(f"the suspect answers {suspect.shape[1]} classes, the owner {outputs.shape[1]}")
        if not bool(torch.isfinite(suspect).all()):
            raise ValueError("the suspect's outputs on the set are not finite")
        return Score(kind, sac_similarity(outputs, suspect), n)
    raise ValueError(f"unknown score kind '{kind}' (known: match, sac, sac_label)")
