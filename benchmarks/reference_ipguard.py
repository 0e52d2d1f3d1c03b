"""A plain per-point IPGuard loop: the reference the batched generator is measured against.

One point at a time, ``torch.optim.Adam`` on that point alone, stop when its loss is 0. Same
starts, targets, loss and update rule as :func:`ipguard.fingerprint.ipguard`; only the batching
differs. Kept out of the library on purpose: it is slow.
"""

from __future__ import annotations

import torch
from torch import nn

from ipguard.fingerprint import ipguard_loss


def ipguard_per_point(
    model: nn.Module, x0: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float, lr: float, max_iter: int, clamp: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points, iterations per point and converged mask, one point after the other."""
    points, iters, done = [], [], []
    for p in range(x0.shape[0]):
        x = x0[p : p + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        steps, converged = 0, False
        for it in range(max_iter + 1):
            loss = ipguard_loss(model(x), i[p : p + 1], j[p : p + 1], k)
            if float(loss) <= 0:
                converged = True
                break
            if it == max_iter:
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            steps += 1
            if clamp:
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
        points.append(x.detach())
        iters.append(steps)
        done.append(converged)
    return torch.cat(points), torch.tensor(iters), torch.tensor(done)
