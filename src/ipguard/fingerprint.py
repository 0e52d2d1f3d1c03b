"""Fingerprint generation methods (a name-keyed registry).

A method returns points in pixel space and the owner's labels on them. ``ipguard`` is the
method of Cao, Jia & Gong, "IPGuard: Protecting Intellectual Property of Deep Neural Networks via
Fingerprinting the Classification Boundary" (AsiaCCS 2021, arXiv:1910.12903), §4.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ipguard.data import Split
from ipguard.errors import ConfigError
from ipguard.models import logits as model_logits
from ipguard.models import predict
from ipguard.progress import bar
from ipguard.registry import Registry


@dataclass
class FingerprintSet:
    """Points, the owner's labels on them, and what generating them cost.

    ``score`` says how a suspect is compared with the owner on them (:data:`SCORE_KINDS`):
    ``match``, the share of points it labels as the owner did; ``sac`` and ``sac_label``, SAC's
    similarity of the correlations of its outputs or labels (:mod:`ipguard.scores`), for which
    ``outputs`` holds the owner's logits (``sac``) so that a suspect can be compared without the owner.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    score: str = "match"
    outputs: torch.Tensor | None = None
    converged: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    start_labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def stats(self) -> dict[str, float]:
        """Generation cost: seconds, point-iterations, share of points that met the margin."""
        out = {"n": float(self.labels.numel()), "seconds": self.seconds}
        if self.iterations is not None:
            out["point_iterations"] = float(self.iterations.sum())
            out["mean_iterations"] = float(self.iterations.float().mean())
            out["max_iterations"] = float(self.iterations.max())
        if self.converged is not None:
            out["converged_share"] = float(self.converged.float().mean())
        return out | self.extra


MethodFn = Callable[..., FingerprintSet]
# Called as ``fn(model, pool, input_shape, num_classes, **entry)``.
METHODS: Registry[MethodFn] = Registry("fingerprint method", leading=("model", "pool", "input_shape", "num_classes"))
register_method = METHODS.register
RESERVED_KEYS = ("method", "pool")
SCORE_KINDS = ("match", "sac", "sac_label")


def list_methods() -> list[str]:
    return METHODS.names()


def check_method(name: str, kwargs: Mapping[str, object], where: str = "fingerprint") -> MethodFn:
    """The registered method ``name``, once its config keys are known to fit it."""
    return METHODS.check(name, kwargs, where)


def generate(
    name: str, model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, where: str = "fingerprint", **kwargs: object
) -> FingerprintSet:
    """Run method ``name`` after checking its config keys; times it."""
    fn = check_method(name, kwargs, where)
    model.eval()
    start = time.perf_counter()
    result = fn(model, pool, input_shape, num_classes, **kwargs)
    result.seconds = time.perf_counter() - start
    return result


def ipguard_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float) -> torch.Tensor:
    """Per-point IPGuard loss ReLU(g_i - g_j + k) + ReLU(max_{t≠i,j} g_t - g_i) on logits g."""
    g_i = logits.gather(1, i[:, None]).squeeze(1)
    g_j = logits.gather(1, j[:, None]).squeeze(1)
    others = logits.scatter(1, i[:, None], float("-inf")).scatter(1, j[:, None], float("-inf"))
    return torch.relu(g_i - g_j + k) + torch.relu(others.amax(1) - g_i)


START_KINDS = ("noise", "real", "misclassified")


def _owner_mistakes(model: nn.Module, pool: Split, what: str) -> Split:
    """The images of ``pool`` that ``model`` labels otherwise than their true label."""
    wrong = (predict(model, pool.x) != pool.y).nonzero().squeeze(1)
    if wrong.numel() == 0:
        raise ConfigError(f"fingerprint.{what}: the owner misclassifies none of the pool; use a larger pool")
    return Split(pool.x[wrong], pool.y[wrong])


def _starts(pool: Split, n: int, input_shape: tuple[int, ...], start: str, gen: torch.Generator, model: nn.Module) -> torch.Tensor:
    if start == "misclassified":
        # Each mistake once: a repeated start adds no evidence, so n is an upper bound here (as for akh).
        return _pick(_owner_mistakes(model, pool, "start=misclassified"), n, gen, "start=misclassified").x
    if start == "noise":
        return torch.rand((n, *input_shape), generator=gen)
    if start == "real":
        if len(pool) == 0:
            raise ConfigError("fingerprint.start=real needs real images, and the pool is empty")
        idx = torch.randperm(len(pool), generator=gen)[:n]
        if idx.numel() < n:
            idx = torch.cat([idx, torch.randint(len(pool), (n - idx.numel(),), generator=gen)])
        return pool.x[idx].clone().float()
    raise ConfigError(f"fingerprint.start: must be one of {', '.join(START_KINDS)}, got '{start}'")


@register_method("ipguard")
def ipguard(
    model: nn.Module,
    pool: Split,
    input_shape: tuple[int, ...],
    num_classes: int,
    n: int = 100,
    k: float = 10.0,
    lr: float = 0.01,
    max_iter: int = 1000,
    start: str = "noise",
    target: str = "random",
    clamp: bool = True,
    seed: int = 0,
    batch_size: int = 0,
) -> FingerprintSet:
    """Points near the owner's boundary, found with Adam on the IPGuard loss (DESIGN §1).

    From x0 (noise, a real image, or a held-out image the owner misclassifies: ``start``) with
    owner label i and target j (random among the others, or least likely), minimise ReLU(g_i - g_j + k) + ReLU(max_{t≠i,j} g_t - g_i). At loss 0
    the owner says j with i runner-up, k logits past the i/j boundary. All points run as one
    batch; a point leaves the gradient work as soon as its loss is 0, and keeps its own Adam
    moments (a per-point Adam, identical to ``torch.optim.Adam`` on that point alone).
    ``clamp`` projects onto the valid pixel range [0, 1] after every step. ``batch_size`` > 0
    caps how many points share one forward pass (memory); 0 means all at once.
    """
    if n < 1 or max_iter < 0 or lr <= 0 or k < 0:
        raise ConfigError(f"fingerprint.ipguard: need n >= 1, max_iter >= 0, lr > 0, k >= 0 (got n={n}, max_iter={max_iter}, lr={lr}, k={k})")
    if target not in {"random", "least_likely"}:
        raise ConfigError(f"fingerprint.target: must be 'random' or 'least_likely', got '{target}'")
    if num_classes < 3:
        raise ConfigError("fingerprint.ipguard: needs at least 3 classes (a target and a runner-up besides)")
    gen = torch.Generator().manual_seed(seed)
    # Random draws on the CPU generator, work on the model's device: same points on any device.
    device = next(model.parameters()).device
    x = _starts(pool, n, input_shape, start, gen, model).to(device)
    n = x.shape[0]
    with torch.no_grad():
        logits0 = torch.cat([model(x[s : s + 1024]) for s in range(0, n, 1024)])
    i = logits0.argmax(1)
    if target == "random":
        j = (i + torch.randint(1, num_classes, (n,), generator=gen).to(device)) % num_classes
    else:
        j = logits0.argmin(1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    steps = torch.zeros(n, dtype=torch.int64, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    chunk = batch_size if batch_size > 0 else n
    for it in bar(range(max_iter + 1), desc="ipguard", unit="it"):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        for s in range(0, active.numel(), chunk):
            idx = active[s : s + chunk]
            xa = x[idx].requires_grad_(True)
            loss = ipguard_loss(model(xa), i[idx], j[idx], k)
            reached = loss <= 0
            done[idx[reached]] = True
            # The last pass only checks the loss: a point takes at most max_iter steps.
            if it == max_iter:
                continue
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            move = idx[~reached]
            g = grad[~reached]
            with torch.no_grad():
                steps[move] += 1
                t = steps[move].to(x.dtype).view(-1, *([1] * len(input_shape)))
                m[move] = beta1 * m[move] + (1 - beta1) * g
                v[move] = beta2 * v[move] + (1 - beta2) * g * g
                m_hat = m[move] / (1 - beta1**t)
                v_hat = v[move] / (1 - beta2**t)
                x_new = x[move] - lr * m_hat / (v_hat.sqrt() + eps)
                x[move] = x_new.clamp(0.0, 1.0) if clamp else x_new
    labels = predict(model, x)
    return FingerprintSet(
        inputs=x.detach().cpu(), labels=labels, converged=done.cpu(), iterations=steps.cpu(), start_labels=i.cpu(), targets=j.cpu()
    )


def _pick(pool: Split, n: int, gen: torch.Generator, what: str) -> Split:
    """``n`` items of the pool drawn without replacement (all of it when it is smaller)."""
    if len(pool) == 0:
        raise ConfigError(f"fingerprint.{what}: the pool of real images is empty")
    idx = torch.randperm(len(pool), generator=gen)[:n]
    return Split(pool.x[idx].clone().float(), pool.y[idx].clone())


@register_method("random_noise")
def random_noise(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100, seed: int = 0) -> FingerprintSet:
    """Uniform noise in [0, 1], labelled by the owner: no boundary search at all (baseline)."""
    x = torch.rand((n, *input_shape), generator=torch.Generator().manual_seed(seed))
    return FingerprintSet(inputs=x, labels=predict(model, x))


@register_method("random_real")
def random_real(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100, seed: int = 0) -> FingerprintSet:
    """Real held-out images, labelled by the owner (baseline)."""
    picked = _pick(pool, n, torch.Generator().manual_seed(seed), "random_real")
    return FingerprintSet(inputs=picked.x, labels=predict(model, picked.x))


def _attack(model: nn.Module, attack: object, picked: Split, seed: int) -> FingerprintSet:
    torch.manual_seed(seed)  # the attacks' random starts draw from torch's global generator
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    adv = attack(picked.x.to(device), picked.y.to(device))  # type: ignore[operator]
    adv = adv.detach().cpu().clamp(0.0, 1.0)
    labels = predict(model, adv)
    flipped = labels != picked.y
    return FingerprintSet(inputs=adv, labels=labels, extra={"flipped_share": float(flipped.float().mean())})


@register_method("fgsm")
def fgsm(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100, eps: float = 8 / 255, seed: int = 0) -> FingerprintSet:
    """Untargeted FGSM examples of held-out images (Goodfellow et al., ICLR 2015), owner-labelled.

    The attack is torchattacks' implementation; ``eps`` is the L∞ budget in pixel units.
    """
    import torchattacks

    if eps <= 0:
        raise ConfigError(f"fingerprint.fgsm.eps: must be > 0, got {eps}")
    picked = _pick(pool, n, torch.Generator().manual_seed(seed), "fgsm")
    return _attack(model, torchattacks.FGSM(model, eps=eps), picked, seed)


@register_method("pgd")
def pgd(
    model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100,
    eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, random_start: bool = True, seed: int = 0,
) -> FingerprintSet:
    """Untargeted L∞ PGD examples of held-out images (Madry et al., ICLR 2018), owner-labelled (torchattacks)."""
    import torchattacks

    if eps <= 0 or alpha <= 0 or steps < 1:
        raise ConfigError(f"fingerprint.pgd: need eps > 0, alpha > 0, steps >= 1 (got {eps}, {alpha}, {steps})")
    picked = _pick(pool, n, torch.Generator().manual_seed(seed), "pgd")
    return _attack(model, torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start), picked, seed)


@register_method("cw")
def cw(
    model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100,
    c: float = 1.0, kappa: float = 0.0, steps: int = 50, lr: float = 0.01, seed: int = 0,
) -> FingerprintSet:
    """Untargeted Carlini-Wagner L2 examples of held-out images (S&P 2017), owner-labelled (torchattacks)."""
    import torchattacks

    if c <= 0 or steps < 1 or lr <= 0 or kappa < 0:
        raise ConfigError(f"fingerprint.cw: need c > 0, steps >= 1, lr > 0, kappa >= 0 (got {c}, {steps}, {lr}, {kappa})")
    picked = _pick(pool, n, torch.Generator().manual_seed(seed), "cw")
    return _attack(model, torchattacks.CW(model, c=c, kappa=kappa, steps=steps, lr=lr), picked, seed)


@register_method("akh")
def akh(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100, seed: int = 0) -> FingerprintSet:
    """Held-out images that the owner misclassifies, with the owner's (wrong) labels.

    The strong trivial baseline of the QuRD paper (AAAI 2025): a model's own mistakes are
    idiosyncratic. Yields fewer than ``n`` points when the owner makes fewer mistakes.
    """
    mistakes = _owner_mistakes(model, pool, "akh")
    picked = _pick(mistakes, n, torch.Generator().manual_seed(seed), "akh")
    return FingerprintSet(inputs=picked.x, labels=predict(model, picked.x), extra={"available": float(len(mistakes))})


def _cutmix(pool: Split, n: int, gen: torch.Generator) -> torch.Tensor:
    """SAC-m's queries: ``n`` held-out images, each with a square from another pasted near a corner.

    After guanjiyang/SAC's ``cut_mix.py``: the square's side is 0.2 of the image's, its centre
    drawn until it lies within the outer sixth of the image on both axes.
    """
    picked = _pick(pool, n, gen, "sac.query=cutmix").x
    donors = picked[torch.randperm(picked.shape[0], generator=gen)]
    h, w = picked.shape[-2:]
    ch, cw = max(1, int(h * 0.2)), max(1, int(w * 0.2))
    out = picked.clone()
    for i in range(out.shape[0]):
        while True:
            cy, cx = (int(torch.randint(size, (1,), generator=gen)) for size in (h, w))
            if not (h / 6 < cy < 5 * h / 6 or w / 6 < cx < 5 * w / 6):
                break
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out[i, :, y0:y1, x0:x1] = donors[i, :, y0:y1, x0:x1]
    return out


SAC_QUERIES = ("cutmix", "misclassified")


def _sac_queries(model: nn.Module, pool: Split, n: int, query: str, seed: int, what: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if query == "cutmix":
        return _cutmix(pool, n, gen)
    if query == "misclassified":
        # SAC-w: each of the owner's mistakes once, so n is an upper bound (as for akh).
        return _pick(_owner_mistakes(model, pool, f"{what}.query=misclassified"), n, gen, f"{what}.query=misclassified").x
    raise ConfigError(f"fingerprint.{what}.query: must be one of {', '.join(SAC_QUERIES)}, got '{query}'")


@register_method("sac")
def sac(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100,
        query: str = "cutmix", seed: int = 0) -> FingerprintSet:
    """SAC (Guan, Liang & He, "Are You Stealing My Model? Sample Correlation for Fingerprinting
    Deep Neural Networks", NeurIPS 2022): queries whose pairwise output correlations a copy keeps.

    ``query``: ``cutmix`` (SAC-m: held-out images with a corner square from another) or
    ``misclassified`` (SAC-w: held-out images the owner gets wrong; fewer than ``n`` when the
    owner makes fewer mistakes). The set carries the owner's logits; a suspect is scored by
    :func:`ipguard.scores.sac_similarity` of its own.
    """
    x = _sac_queries(model, pool, n, query, seed, "sac")
    if x.shape[0] < 2:
        raise ConfigError("fingerprint.sac: needs at least 2 queries (the owner misclassifies fewer)")
    out = model_logits(model, x)
    return FingerprintSet(inputs=x, labels=out.argmax(1), score="sac", outputs=out)


@register_method("sac_label")
def sac_label(model: nn.Module, pool: Split, input_shape: tuple[int, ...], num_classes: int, n: int = 100,
              query: str = "cutmix", seed: int = 0) -> FingerprintSet:
    """SAC on labels only (a suspect behind an API that answers labels): the queries of :func:`sac`,
    scored by :func:`ipguard.scores.label_pair_similarity` of the suspect's labels to the owner's."""
    x = _sac_queries(model, pool, n, query, seed, "sac_label")
    if x.shape[0] < 2:
        raise ConfigError("fingerprint.sac_label: needs at least 2 queries (the owner misclassifies fewer)")
    return FingerprintSet(inputs=x, labels=predict(model, x), score="sac_label")
