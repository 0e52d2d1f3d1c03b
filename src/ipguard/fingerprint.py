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
# ``data``: the split a method trains models of its own on (``cae``), loaded and passed by the pipeline.
RESERVED_KEYS = ("method", "pool", "data")
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


SURROGATE_METHODS = ("distill", "extract", "extract_adv")


def _owner_models(model: nn.Module, data: Split | None, surrogates: list | None, references: list | None, seed: int,
                  what: str) -> tuple[list[nn.Module], list[nn.Module], float]:
    """The owner's own surrogates and references (see :func:`cae`), trained on ``data``, and the seconds that took.

    A surrogate is an entry of a post-processor that copies the owner (``method``: one of
    ``SURROGATE_METHODS``, with that post-processor's keys and a ``seed``); a reference is built
    and trained as a student is, on the true labels instead of the owner's.
    """
    from ipguard.postprocess import apply_postprocess, fresh_student, student_cfg
    from ipguard.training import train

    for kind, specs in (("surrogates", surrogates), ("references", references)):
        if not specs or not all(isinstance(spec, Mapping) for spec in specs):
            raise ConfigError(f"fingerprint.{what}.{kind}: give a list of one or more model entries, got {specs!r}")
    for i, spec in enumerate(surrogates or []):
        if spec.get("method") not in SURROGATE_METHODS:
            raise ConfigError(f"fingerprint.{what}.surrogates[{i}].method: must be one of {', '.join(SURROGATE_METHODS)}, "
                              f"got {spec.get('method')!r}")
    for i, spec in enumerate(references or []):
        unknown = sorted(set(spec) - {"seed", "arch", "kwargs", "training", "train", "epochs"})
        if unknown:
            raise ConfigError(f"fingerprint.{what}.references[{i}]: unknown key '{unknown[0]}' "
                              "(allowed: arch, epochs, kwargs, seed, train, training)")
    if data is None or len(data) == 0:
        raise ConfigError(f"fingerprint.{what}: needs the owner's training images to train surrogates and references on "
                          "(`data:` a split in the pipeline, --train-data with the CLI)")
    start = time.perf_counter()
    trained_s = []
    for i, spec in enumerate(surrogates or []):
        kwargs = {k: v for k, v in spec.items() if k not in {"method", "seed"}}
        s_seed = int(spec.get("seed", seed + 1 + i))
        trained_s.append(apply_postprocess(str(spec["method"]), model, data, s_seed, where=f"fingerprint.{what}.surrogates[{i}]", **kwargs).eval())  # type: ignore[arg-type]
    trained_r = []
    for i, spec in enumerate(references or []):
        where = f"fingerprint.{what}.references[{i}]"
        r_seed = int(spec.get("seed", seed + 101 + i))
        cfg = student_cfg(where, spec.get("training"), spec.get("train"), epochs=spec.get("epochs"))
        ref = fresh_student(model, r_seed, spec.get("arch"), spec.get("kwargs"), data.x)  # type: ignore[arg-type]
        train(ref, data.x, data.y, cfg, r_seed, desc=f"{what} reference")
        trained_r.append(ref.eval())
    return trained_s, trained_r, time.perf_counter() - start


def _cae_outputs(model: nn.Module, surrogates: list[nn.Module], references: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The owner's probabilities, the surrogates' mean probabilities and the references' largest
    probability per class on ``x``."""
    p_owner = torch.softmax(model(x), 1)
    p_surrogates = torch.stack([torch.softmax(s(x), 1) for s in surrogates]).mean(0)
    p_references = torch.stack([torch.softmax(r(x), 1) for r in references]).amax(0)
    return p_owner, p_surrogates, p_references


@register_method("cae")
def cae(
    model: nn.Module,
    pool: Split,
    input_shape: tuple[int, ...],
    num_classes: int,
    n: int = 100,
    candidates: int = 300,
    surrogates: list | None = None,
    references: list | None = None,
    eps: float = 8 / 255,
    alpha: float = 1 / 255,
    steps: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    data: Split | None = None,
) -> FingerprintSet:
    """Conferrable adversarial examples (CAE: Lukas, Zhang & Kerschbaum, "Deep Neural Network
    Fingerprinting by Conferrable Adversarial Examples", ICLR 2021, §4).

    The owner trains *surrogates* of its own model on its own images ``data`` (``surrogates``:
    entries of the post-processors ``distill``, ``extract`` or ``extract_adv`` with their keys and a ``seed``) and
    *references*, independent models trained on the same images with their true labels
    (``references``: ``seed``, ``arch``/``kwargs`` (the owner's by default) and the students'
    training keys ``training``, ``train``, ``epochs``). From ``candidates`` held-out images of
    ``pool`` (labels x0 with the owner's y0), L-inf PGD (``eps``, ``alpha``, ``steps``) maximises
    the conferrability of the owner's new label, Σ_{c≠y0} p_owner(c) · mean_s p_s(c) · (1 − max_r p_r(c)):
    the owner leaves y0 for a class that its surrogates follow and no reference shares. The ``n``
    points of highest conferrability of the owner's label t ≠ y0, mean_s p_s(t) · (1 − max_r p_r(t)),
    are kept (fewer when fewer leave y0). None of these models is a suspect: the evaluation sees
    only students and independents that took no part in choosing the points.
    """
    if n < 1 or candidates < n:
        raise ConfigError(f"fingerprint.cae: need n >= 1 and candidates >= n (got n={n}, candidates={candidates})")
    if eps <= 0 or alpha <= 0 or steps < 1 or batch_size < 1:
        raise ConfigError(f"fingerprint.cae: need eps > 0, alpha > 0, steps >= 1, batch_size >= 1 (got {eps}, {alpha}, {steps}, {batch_size})")
    trained_s, trained_r, train_seconds = _owner_models(model, data, surrogates, references, seed, "cae")

    device = next(model.parameters()).device
    picked = _pick(pool, candidates, torch.Generator().manual_seed(seed), "cae")
    x0 = picked.x.to(device)
    y0 = predict(model, x0).to(device)
    x = x0.clone()
    for _ in bar(range(steps), desc="cae", unit="step"):
        for s in range(0, x.shape[0], batch_size):
            xa = x[s : s + batch_size].clone().requires_grad_(True)
            p_owner, p_s, p_r = _cae_outputs(model, trained_s, trained_r, xa)
            conferrable = (p_s * (1 - p_r)).scatter(1, y0[s : s + batch_size, None], 0.0)
            loss = -torch.log((p_owner * conferrable).sum(1) + 1e-12)
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            with torch.no_grad():
                step = xa - alpha * grad.sign()
                x[s : s + batch_size] = torch.min(torch.max(step, x0[s : s + batch_size] - eps), x0[s : s + batch_size] + eps).clamp(0.0, 1.0)
    with torch.no_grad():
        outs = [_cae_outputs(model, trained_s, trained_r, x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]
        p_owner, p_s, p_r = (torch.cat(parts) for parts in zip(*outs))
        t = p_owner.argmax(1)
        score = (p_s.gather(1, t[:, None]) * (1 - p_r.gather(1, t[:, None]))).squeeze(1)
        left = (t != y0).nonzero().squeeze(1)
        if left.numel() == 0:
            raise ConfigError("fingerprint.cae: no candidate left the owner's label within eps; raise eps or steps")
        keep = left[score[left].argsort(descending=True, stable=True)[:n]]
        s_agree = torch.stack([s(x[keep]).argmax(1) == t[keep] for s in trained_s]).float().mean()
        r_agree = torch.stack([r(x[keep]).argmax(1) == t[keep] for r in trained_r]).float().mean()
    return FingerprintSet(
        inputs=x[keep].detach().cpu(), labels=t[keep].cpu(), start_labels=y0[keep].cpu(),
        extra={"available": float(left.numel()), "conferrability": float(score[keep].mean()),
               "surrogate_agreement": float(s_agree), "reference_agreement": float(r_agree),
               "train_seconds": train_seconds},
    )


@register_method("conferrable_mistakes")
def conferrable_mistakes(
    model: nn.Module,
    pool: Split,
    input_shape: tuple[int, ...],
    num_classes: int,
    n: int = 100,
    surrogates: list | None = None,
    references: list | None = None,
    batch_size: int = 256,
    seed: int = 0,
    data: Split | None = None,
) -> FingerprintSet:
    """The owner's mistakes that its own copies inherit: ``akh``'s candidates ranked by CAE's conferrability.

    ``akh`` (the owner's misclassified held-out images, QuRD, AAAI 2025) is the one method that
    held against adversarially trained extraction on our zoo, where every perturbed point
    (IPGuard's, CAE's) falls to chance: a thief's adversarial training smooths the boundary that
    such points sit near, but it still learns the owner's labels of natural images, mistakes
    included. Not every mistake is inherited, though: many are ones any model makes (a
    cat that looks like a dog). So, after Lukas, Zhang & Kerschbaum (ICLR 2021), the owner trains
    *surrogates* of its own model on its own images ``data`` (entries of ``distill``, ``extract``
    or ``extract_adv``, as for :func:`cae`) and *references* trained on the true labels, and keeps
    the ``n`` mistakes of highest conferrability mean_s p_s(y) · (1 − max_r p_r(y)) of the owner's
    label y: the ones its copies repeat and independent models do not. No perturbation, so the
    points are natural images a service cannot tell from ordinary queries. Yields fewer than
    ``n`` points when the owner makes fewer mistakes.
    """
    if n < 1 or batch_size < 1:
        raise ConfigError(f"fingerprint.conferrable_mistakes: need n >= 1 and batch_size >= 1 (got {n}, {batch_size})")
    # The candidates first: a pool without mistakes fails before minutes of training.
    mistakes = _owner_mistakes(model, pool, "conferrable_mistakes")
    trained_s, trained_r, train_seconds = _owner_models(model, data, surrogates, references, seed, "conferrable_mistakes")
    x = mistakes.x.float()
    with torch.no_grad():
        outs = [_cae_outputs(model, trained_s, trained_r, x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]
        p_owner, p_s, p_r = (torch.cat(parts) for parts in zip(*outs))
    y = p_owner.argmax(1)
    score = (p_s.gather(1, y[:, None]) * (1 - p_r.gather(1, y[:, None]))).squeeze(1)
    keep = score.argsort(descending=True, stable=True)[:n]
    with torch.no_grad():
        s_agree = torch.stack([s(x[keep]).argmax(1) == y[keep] for s in trained_s]).float().mean()
        r_agree = torch.stack([r(x[keep]).argmax(1) == y[keep] for r in trained_r]).float().mean()
    return FingerprintSet(
        inputs=x[keep].clone(), labels=predict(model, x[keep]),
        extra={"available": float(len(mistakes)), "conferrability": float(score[keep].mean()),
               "surrogate_agreement": float(s_agree), "reference_agreement": float(r_agree),
               "train_seconds": train_seconds},
    )
