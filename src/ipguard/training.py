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

    def __init__(self, params: Iterable[nn.Parameter], cfg: TrainingCfg, scales: Iterable[float] | None = None) -> None:
        if cfg.optimizer not in {"adam", "sgd"}:
            raise ConfigError(f"training.optimizer: unknown optimizer '{cfg.optimizer}' (known: adam, sgd)")
        self.params = list(params)
        # Per-parameter rate multipliers; a parameter's L2 decay is divided by its multiplier, so
        # that lr * decay (the shrinkage per step) is the same for every parameter (airbench).
        self.scales = [1.0] * len(self.params) if scales is None else [float(v) for v in scales]
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
            scale = self.scales[idx]
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay / scale)
            m = self.m[idx]
            if self.kind == "adam":
                m.lerp_(g, 1 - b1)
                self.v[idx].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (self.v[idx].sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps)
                p.addcdiv_(m, denom, value=-lr * scale / (1 - b1**self.t))
            else:
                if self.t == 1:
                    m.copy_(g)
                else:
                    m.mul_(self.momentum).add_(g)
                p.add_(g.add(m, alpha=self.momentum), alpha=-lr * scale)


SCHEDULES = ("cosine", "constant", "onecycle")


def lr_factor(schedule: str, step: int, total: int, cfg: TrainingCfg | None = None) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (``cfg``: the one-cycle shape)."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":
        # airbench's triangle: start -> 1 at `peak` of the steps -> end at the last step.
        cfg = cfg or TrainingCfg()
        peak = max(1, int(cfg.onecycle_peak * total))
        if step < peak:
            return cfg.onecycle_start + (1.0 - cfg.onecycle_start) * step / peak
        return 1.0 + (cfg.onecycle_end - 1.0) * min(1.0, (step - peak) / max(1, total - peak))
    raise ConfigError(f"training.schedule: unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")


AUGMENT_PAD = 4
# The augmentation draws from its own stream, so switching it on leaves the shuffling unchanged.
_AUGMENT_STREAM = 0x5EED


PADDINGS = ("zeros", "reflect")


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = AUGMENT_PAD, padding: str = "zeros") -> torch.Tensor:
    """The standard CIFAR augmentation (He et al. 2016): a random ``H x W`` crop of the image
    padded by ``pad`` pixels on each side, then a horizontal flip with probability 1/2.

    ``x`` is a batch in pixel space ``(N, C, H, W)``, so zero padding is black, as in torchvision's
    ``RandomCrop(32, padding=4)`` before normalisation; ``padding="reflect"`` mirrors the border
    (airbench's translation by 2). Offsets and flips come from ``gen`` (a CPU generator), one per
    image: equal seeds give equal batches on CPU. Shape and dtype are kept.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="constant" if padding == "zeros" else "reflect")
    rows = (dy[:, None] + torch.arange(h)).to(x.device)                  # (N, H)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)                 # a flip reads the columns backwards
    cols = (dx[:, None] + cols).to(x.device)                              # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


AUTOCASTS = ("none", "bf16")


def bias_scales(model: nn.Module, params: list[nn.Parameter], scale: float) -> list[float]:
    """``scale`` for the shifts of BatchNorm layers among ``params``, 1 for everything else."""
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    return [scale if id(p) in shifts else 1.0 for p in params]


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
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"{where}.schedule: unknown schedule '{cfg.schedule}' (known: {', '.join(SCHEDULES)})")
    for key in ("onecycle_start", "onecycle_peak", "onecycle_end"):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}.{key}: must lie in [0, 1], got {value!r}")
    if not isinstance(cfg.augment_pad, int) or isinstance(cfg.augment_pad, bool) or cfg.augment_pad < 0:
        raise ConfigError(f"{where}.augment_pad: must be an integer >= 0, got {cfg.augment_pad!r}")
    if cfg.augment_padding not in PADDINGS:
        raise ConfigError(f"{where}.augment_padding: unknown padding '{cfg.augment_padding}' (known: {', '.join(PADDINGS)})")
    if not isinstance(cfg.label_smoothing, (int, float)) or not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"{where}.label_smoothing: must lie in [0, 1), got {cfg.label_smoothing!r}")
    if not isinstance(cfg.bias_lr_scale, (int, float)) or isinstance(cfg.bias_lr_scale, bool) or not cfg.bias_lr_scale > 0:
        raise ConfigError(f"{where}.bias_lr_scale: must be a number > 0, got {cfg.bias_lr_scale!r}")
    if not isinstance(cfg.channels_last, bool):
        raise ConfigError(f"{where}.channels_last: must be true or false, got {cfg.channels_last!r}")
    if cfg.autocast not in AUTOCASTS:
        raise ConfigError(f"{where}.autocast: unknown mode '{cfg.autocast}' (known: {', '.join(AUTOCASTS)})")
    if not isinstance(cfg.max_samples, int) or isinstance(cfg.max_samples, bool) or cfg.max_samples < 0:
        raise ConfigError(f"{where}.max_samples: must be an integer >= 0 (0: every example each epoch), got {cfg.max_samples!r}")
    if not isinstance(cfg.augment, bool):
        raise ConfigError(f"{where}.augment: must be true or false, got {cfg.augment!r}")
    if not isinstance(cfg.lookahead, bool):
        raise ConfigError(f"{where}.lookahead: must be true or false, got {cfg.lookahead!r}")
    if not isinstance(cfg.lookahead_every, int) or isinstance(cfg.lookahead_every, bool) or cfg.lookahead_every < 1:
        raise ConfigError(f"{where}.lookahead_every: must be an integer >= 1, got {cfg.lookahead_every!r}")


class Lookahead:
    """airbench94's lookahead (Jordan, arXiv 2404.00498, after Zhang et al., NeurIPS 2019): an
    exponential average of the floating-point state that the model is reset to at each update."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for key, value in model.state_dict().items():
            if key in self.average:
                self.average[key].lerp_(value, 1.0 - decay)
                value.copy_(self.average[key])


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
    perturb: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` on ``(x, y)`` in place; returns the mean loss per epoch.

    ``loss(logits, y_batch)`` is cross-entropy on labels unless given (distillation passes a
    soft-label loss with the teacher's logits as ``y``).
    ``parameters`` restricts what is updated (the last layer, for FTLL/RTLL); everything else
    keeps its values. ``after_step()`` runs after every optimizer step (pruning re-applies its
    mask there). ``perturb(model, x_batch, y_batch)`` replaces each (augmented) batch before the
    step (adversarial training). Each epoch visits a fresh seeded permutation of the data, cut to
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
    opt = Optimizer(params, cfg, bias_scales(model, params, cfg.bias_lr_scale))
    per_epoch = x.shape[0] if cfg.max_samples <= 0 else min(cfg.max_samples, x.shape[0])
    total = cfg.epochs * math.ceil(per_epoch / cfg.batch_size)
    step = 0
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + _AUGMENT_STREAM)
    loss_fn = loss if loss is not None else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device = next(model.parameters()).device  # data stays on the CPU; batches go to the model
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    autocast = cfg.autocast == "bf16"
    history: list[float] = []
    # Fine-tuning only the last layer keeps the rest frozen, batch-norm statistics included.
    model.train(parameters is None)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    lookahead = Lookahead(model) if cfg.lookahead and parameters is None else None
    try:
        for _ in bar(range(cfg.epochs), desc=desc, unit="epoch"):
            order = torch.randperm(x.shape[0], generator=gen)[:per_epoch]
            total_loss = 0.0
            for i in range(0, per_epoch, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                xb = augment_batch(x[idx], aug_gen, cfg.augment_pad, cfg.augment_padding) if cfg.augment else x[idx]
                xb, yb = xb.to(device).contiguous(memory_format=layout), y[idx].to(device)
                if perturb is not None:
                    xb = perturb(model, xb, yb).contiguous(memory_format=layout)
                opt.zero_grad()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    batch_loss = loss_fn(model(xb), yb)
                batch_loss.backward()
                opt.step(cfg.lr * lr_factor(cfg.schedule, step, total, cfg))
                if after_step is not None:
                    after_step()
                step += 1
                if lookahead is not None and step % cfg.lookahead_every == 0:
                    lookahead.update(model, 0.95**cfg.lookahead_every * (step / total) ** 3)
                total_loss += batch_loss.item() * idx.shape[0]
            history.append(total_loss / per_epoch)
        if lookahead is not None:
            lookahead.update(model, 1.0)  # the average is the model
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        if cfg.channels_last:  # stored and fingerprinted in the usual layout
            model.to(memory_format=torch.contiguous_format)
        model.eval()
    return history
