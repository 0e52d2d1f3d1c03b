"""Supervised training, used for the zoo and for the fine-tuning post-processors."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ipguard.config import TrainingCfg
from ipguard.errors import ConfigError
from ipguard.progress import bar


class Optimizer:
    """Adam, or SGD with Nesterov momentum, over a fixed list of parameters.

    The update rules are those of ``torch.optim.Adam`` and ``torch.optim.SGD(nesterov=True)``
    (L2 weight decay added to the gradient; a test checks both against torch). They are written
    out because building any ``torch.optim`` optimizer imports torch's compiler stack, about
    1.5 s per process, and the pipeline starts dozens of short training processes.
    """

    def __init__(self, params: Iterable[nn.Parameter], cfg: TrainingCfg) -> None:
        if cfg.optimizer not in {"adam", "sgd"}:
            raise ConfigError(f"training.optimizer: unknown optimizer '{cfg.optimizer}' (known: adam, sgd)")
        self.params = list(params)
        self.kind, self.weight_decay, self.momentum = cfg.optimizer, cfg.weight_decay, cfg.momentum
        self.betas, self.eps = (0.9, 0.999), 1e-8
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params] if cfg.optimizer == "adam" else []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        for idx, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            m = self.m[idx]
            if self.kind == "adam":
                m.lerp_(g, 1 - b1)
                self.v[idx].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (self.v[idx].sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))
            else:
                if self.t == 1:
                    m.copy_(g)
                else:
                    m.mul_(self.momentum).add_(g)
                p.add_(g.add(m, alpha=self.momentum), alpha=-lr)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"training.schedule: unknown schedule '{schedule}' (known: cosine, constant)")


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainingCfg,
    seed: int,
    parameters: Iterable[nn.Parameter] | None = None,
    desc: str = "train",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` on ``(x, y)`` in place; returns the mean loss per epoch.

    ``loss(logits, y_batch)`` is cross-entropy on labels unless given (distillation passes a
    soft-label loss with the teacher's logits as ``y``).
    ``parameters`` restricts what is updated (the last layer, for FTLL/RTLL); everything else
    keeps its values. Shuffling is seeded, so equal inputs give equal weights on CPU.
    """
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"training: epochs >= 0, batch_size >= 1 and lr > 0 are required, got {cfg}")
    lr_factor(cfg.schedule, 0, 1)
    params = [p for p in (model.parameters() if parameters is None else parameters)]
    trainable = {id(p) for p in params}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = Optimizer(params, cfg)
    total = cfg.epochs * math.ceil(x.shape[0] / cfg.batch_size)
    step = 0
    gen = torch.Generator().manual_seed(seed)
    loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
    device = next(model.parameters()).device  # data stays on the CPU; batches go to the model
    history: list[float] = []
    # Fine-tuning only the last layer keeps the rest frozen, batch-norm statistics included.
    model.train(parameters is None)
    try:
        for _ in bar(range(cfg.epochs), desc=desc, unit="epoch"):
            order = torch.randperm(x.shape[0], generator=gen)
            total_loss = 0.0
            for i in range(0, x.shape[0], cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                opt.zero_grad()
                batch_loss = loss_fn(model(x[idx].to(device)), y[idx].to(device))
                batch_loss.backward()
                opt.step(cfg.lr * lr_factor(cfg.schedule, step, total))
                step += 1
                total_loss += batch_loss.item() * idx.shape[0]
            history.append(total_loss / x.shape[0])
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.eval()
    return history
