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


AUGMENT_PAD = 4
# The augmentation draws from its own stream, so switching it on leaves the shuffling unchanged.
_AUGMENT_STREAM = 0x5EED


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = AUGMENT_PAD) -> torch.Tensor:
    """The standard CIFAR augmentation (He et al. 2016): a random ``H x W`` crop of the image
    padded by ``pad`` zero pixels on each side, then a horizontal flip with probability 1/2.

    ``x`` is a batch in pixel space ``(N, C, H, W)``, so the padding is black, as in torchvision's
    ``RandomCrop(32, padding=4)`` before normalisation. Offsets and flips come from ``gen`` (a CPU
    generator), one per image: equal seeds give equal batches on CPU. Shape and dtype are kept.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h)).to(x.device)                  # (N, H)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)                 # a flip reads the columns backwards
    cols = (dx[:, None] + cols).to(x.device)                              # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def check_training(cfg: TrainingCfg, where: str = "training") -> None:
    """Reject settings the loop cannot use, naming the key (before any data is read or trained)."""
    if not isinstance(cfg.epochs, int) or isinstance(cfg.epochs, bool) or cfg.epochs < 0:
        raise ConfigError(f"{where}.epochs: must be an integer >= 0, got {cfg.epochs!r}")
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise ConfigError(f"{where}.batch_size: must be an integer >= 1, got {cfg.batch_size!r}")
    if not isinstance(cfg.lr, (int, float)) or isinstance(cfg.lr, bool) or not cfg.lr > 0:
        raise ConfigError(f"{where}.lr: must be a number > 0, got {cfg.lr!r}")
    if cfg.optimizer not in {"adam", "sgd"}:
        raise ConfigError(f"{where}.optimizer: unknown optimizer '{cfg.optimizer}' (known: adam, sgd)")
    if not isinstance(cfg.momentum, (int, float)) or not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"{where}.momentum: must lie in [0, 1), got {cfg.momentum!r}")
    if not isinstance(cfg.weight_decay, (int, float)) or not cfg.weight_decay >= 0.0:
        raise ConfigError(f"{where}.weight_decay: must be a number >= 0, got {cfg.weight_decay!r}")
    if cfg.schedule not in {"cosine", "constant"}:
        raise ConfigError(f"{where}.schedule: unknown schedule '{cfg.schedule}' (known: cosine, constant)")
    if not isinstance(cfg.max_samples, int) or isinstance(cfg.max_samples, bool) or cfg.max_samples < 0:
        raise ConfigError(f"{where}.max_samples: must be an integer >= 0 (0: every example each epoch), got {cfg.max_samples!r}")
    if not isinstance(cfg.augment, bool):
        raise ConfigError(f"{where}.augment: must be true or false, got {cfg.augment!r}")


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainingCfg,
    seed: int,
    parameters: Iterable[nn.Parameter] | None = None,
    desc: str = "train",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``(x, y)`` in place; returns the mean loss per epoch.

    ``loss(logits, y_batch)`` is cross-entropy on labels unless given (distillation passes a
    soft-label loss with the teacher's logits as ``y``).
    ``parameters`` restricts what is updated (the last layer, for FTLL/RTLL); everything else
    keeps its values. ``after_step()`` runs after every optimizer step (pruning re-applies its
    mask there). Each epoch visits a fresh seeded permutation of the data, cut to
    ``cfg.max_samples`` examples when that is set (so an epoch costs the same whatever the data
    size); ``cfg.augment`` crops and flips every batch (:func:`augment_batch`). Shuffling and
    augmentation are seeded, so equal inputs give equal weights on CPU.
    """
    check_training(cfg)
    params = [p for p in (model.parameters() if parameters is None else parameters)]
    trainable = {id(p) for p in params}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = Optimizer(params, cfg)
    per_epoch = x.shape[0] if cfg.max_samples <= 0 else min(cfg.max_samples, x.shape[0])
    total = cfg.epochs * math.ceil(per_epoch / cfg.batch_size)
    step = 0
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + _AUGMENT_STREAM)
    loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
    device = next(model.parameters()).device  # data stays on the CPU; batches go to the model
    history: list[float] = []
    # Fine-tuning only the last layer keeps the rest frozen, batch-norm statistics included.
    model.train(parameters is None)
    try:
        for _ in bar(range(cfg.epochs), desc=desc, unit="epoch"):
            order = torch.randperm(x.shape[0], generator=gen)[:per_epoch]
            total_loss = 0.0
            for i in range(0, per_epoch, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                xb = augment_batch(x[idx], aug_gen) if cfg.augment else x[idx]
                opt.zero_grad()
                batch_loss = loss_fn(model(xb.to(device)), y[idx].to(device))
                batch_loss.backward()
                opt.step(cfg.lr * lr_factor(cfg.schedule, step, total))
                if after_step is not None:
                    after_step()
                step += 1
                total_loss += batch_loss.item() * idx.shape[0]
            history.append(total_loss / per_epoch)
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.eval()
    return history
