"""SAC: how alike two models answer one set of queries, by how their answers correlate.

Sample Correlation (Guan, Liang & He, "Are You Stealing My Model? Sample Correlation for
Fingerprinting Deep Neural Networks", NeurIPS 2022; code: guanjiyang/SAC) compares not the
answers themselves but their pairwise structure: for outputs o_1..o_n of one model on n queries,
C_ij = (1 - cos(o_i, o_j)) / 2, and two models are alike when their matrices are. SAC's distance
is mean_ij |C_suspect - C_owner|, in [0, 1]; the scores here are similarities, 1 - distance, so
that for every fingerprint set of this project a higher score means "more like the owner".

The label-only form (a suspect behind an API that returns labels) uses one-hot outputs: C_ij is
then 0 when i and j get the same label and a constant otherwise, so SAC's distance is, up to a
constant factor, the share of pairs on which the two models disagree about "same label or
not". :func:`label_pair_similarity` returns 1 minus that share over the n (n - 1) / 2 pairs, an
affine function of SAC's distance on one-hot outputs (the same ranking of suspects).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def correlation_matrix(outputs: torch.Tensor) -> torch.Tensor:
    """SAC's correlation of every pair of rows: (1 - cosine similarity) / 2, in [0, 1].

    In float64, so that one model's matrix is the same whatever its outputs' float type.
    """
    if outputs.ndim != 2 or outputs.shape[0] < 2:
        raise ValueError(f"outputs: need one row per query and at least 2 queries, got shape {tuple(outputs.shape)}")
    z = F.normalize(outputs.detach().to(torch.float64), dim=1)
    return ((1.0 - z @ z.T) / 2.0).clamp_(0.0, 1.0)


def sac_similarity(owner_outputs: torch.Tensor, suspect_outputs: torch.Tensor) -> float:
    """1 - SAC's distance between the correlation matrices of the owner's and a suspect's outputs."""
    if owner_outputs.shape != suspect_outputs.shape:
        raise ValueError(f"outputs differ in shape: owner {tuple(owner_outputs.shape)}, suspect {tuple(suspect_outputs.shape)}")
    owner, suspect = correlation_matrix(owner_outputs), correlation_matrix(suspect_outputs)
    return float(1.0 - (owner - suspect).abs().mean())


def label_pair_similarity(owner_labels: torch.Tensor, suspect_labels: torch.Tensor) -> float:
    """The share of query pairs on which a suspect agrees with the owner whether the two share a label."""
    if owner_labels.ndim != 1 or owner_labels.shape != suspect_labels.shape or owner_labels.numel() < 2:
        raise ValueError(f"labels: need two equal-length vectors of at least 2 labels, got {tuple(owner_labels.shape)} "
                         f"and {tuple(suspect_labels.shape)}")
    same_owner = owner_labels[:, None] == owner_labels[None, :]
    same_suspect = suspect_labels[:, None] == suspect_labels[None, :]
    n = owner_labels.numel()
    disagree = int(torch.triu(same_owner != same_suspect, diagonal=1).sum())
    return 1.0 - disagree / (n * (n - 1) / 2)
