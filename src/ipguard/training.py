"""Supervised training, used for the zoo and for the fine-tuning post-processors."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ipguard.config import TrainingCfg
from ipguard.errors import ConfigError
from ipguard.progress import bar


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainingCfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ConfigError(f"training.optimizer: unknown optimizer '{cfg.optimizer}' (known: adam, sgd)")


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainingCfg,
    seed: int,
    parameters: Iterable[nn.Parameter] | None = None,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` on ``(x, y)`` in place with cross-entropy; returns the mean loss per epoch.

    ``parameters`` restricts what is updated (the last layer, for FTLL/RTLL); everything else
    keeps its values. Shuffling is seeded, so equal inputs give equal weights on CPU.
    """
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"training: epochs >= 0, batch_size >= 1 and lr > 0 are required, got {cfg}")
    if cfg.schedule not in {"cosine", "constant"}:
        raise ConfigError(f"training.schedule: unknown schedule '{cfg.schedule}' (known: cosine, constant)")
    params = [p for p in (model.parameters() if parameters is None else parameters)]
    trainable = {id(p) for p in params}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = make_optimizer(params, cfg)
    steps_per_epoch = math.ceil(x.shape[0] / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * s / total))) if cfg.schedule == "cosine" else (lambda s: 1.0)
    )
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    history: list[float] = []
    # Fine-tuning only the last layer keeps the rest frozen, batch-norm statistics included.
    model.train(parameters is None)
    try:
        for _ in bar(range(cfg.epochs), desc=desc, unit="epoch"):
            order = torch.randperm(x.shape[0], generator=gen)
            total_loss = 0.0
            for i in range(0, x.shape[0], cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * idx.shape[0]
            history.append(total_loss / x.shape[0])
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.eval()
    return history
