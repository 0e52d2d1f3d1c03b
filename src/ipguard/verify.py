"""Matching a suspect against a fingerprint set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ipguard.models import predict


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
