"""A small fast-training CIFAR net after Keller Jordan's airbench (arXiv 2404.00498, "94 % on
CIFAR-10 in 3.29 seconds on a single GPU"; code: KellerJordan/cifar10-airbench).

The network: a frozen 2×2 patch-whitening convolution (its filters are the eigenvectors of the
training patches' covariance, scaled to unit variance, each with its negative), GELU, then three
blocks of conv 3×3 → max-pool 2 → BatchNorm → GELU → conv 3×3 → BatchNorm → GELU, a 3×3 max-pool,
and a linear classifier on the pooled features scaled by 1/9. Convolutions start as identities on
their first channels (a residual path without the skip), BatchNorm layers learn only their biases.
At evaluation the logits are averaged over the image and its mirror image (flip test-time
augmentation) when ``flip_tta`` is set: part of the model, so fingerprints see what users see.

The training side of the recipe (Nesterov SGD, label smoothing, one-cycle schedule, flip and
2-pixel translation) lives in :mod:`ipguard.training` and ``conf/training/fast.yaml``. Left out
of airbench's recipe: the lookahead average, the whitening bias trained only for 3 epochs, and
translation at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BiasBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays at one; only the shift is learnt (as in airbench).

    The scale is kept as a buffer, not a parameter, so that no training loop can move it.
    """

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias,
                            use_batch, self.momentum or 0.0, self.eps)


def _dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = _dirac_conv(c_in, c_out)
        self.norm1 = BiasBatchNorm(c_out)
        self.conv2 = _dirac_conv(c_out, c_out)
        self.norm2 = BiasBatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """See the module docstring. ``init_from_data`` must run on training images before training."""

    def __init__(
        self, num_classes: int, in_channels: int, widths: Sequence[int], whiten_kernel: int, scale: float, flip_tta: bool,
    ) -> None:
        super().__init__()
        k = whiten_kernel
        self.whiten_width = 2 * in_channels * k * k
        # A buffer: the whitening filters are computed from data, never trained.
        self.register_buffer("whiten_weight", torch.zeros(self.whiten_width, in_channels, k, k))
        self.whiten_bias = nn.Parameter(torch.zeros(self.whiten_width))
        groups, c = [], self.whiten_width
        for width in widths:
            groups.append(ConvGroup(c, width))
            c = width
        self.groups = nn.Sequential(*groups)
        self.scale = scale
        self.flip_tta = flip_tta
        self.classifier = nn.Linear(c, num_classes, bias=False)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from the covariance of every ``k×k`` patch of ``x`` (normalised images)."""
        c, k = self.whiten_weight.shape[1], self.whiten_weight.shape[2]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = patches.T @ patches / patches.shape[0]
        values, vectors = torch.linalg.eigh(cov.double())
        values, vectors = values.flip(0).float(), vectors.T.flip(0).float()
        filters = (vectors / torch.sqrt(values.clamp_min(0) + eps)[:, None]).reshape(c * k * k, c, k, k)
        self.whiten_weight.copy_(torch.cat([filters, -filters]).to(self.whiten_weight))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(F.conv2d(x, self.whiten_weight, self.whiten_bias))
        x = self.groups(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.classifier(x * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.flip_tta:
            return self._logits(x)
        return 0.5 * (self._logits(x) + self._logits(x.flip(-1)))


def airbench(
    num_classes: int, input_shape: tuple[int, ...], widths: Sequence[int] = (64, 256, 256), whiten_kernel: int = 2,
    scale: float = 1.0 / 9.0, flip_tta: bool = True,
) -> nn.Module:
    """airbench94's network (widths 64/256/256); narrower ``widths`` train faster on a CPU."""
    if len(widths) < 1 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths: must be one or more positive integers, got {list(widths)}")
    if whiten_kernel < 1:
        raise ValueError(f"whiten_kernel: must be >= 1, got {whiten_kernel}")
    return AirbenchNet(num_classes, input_shape[0], [int(w) for w in widths], int(whiten_kernel), float(scale), bool(flip_tta))
