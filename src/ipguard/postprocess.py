"""Post-processing: the ways a thief may alter a stolen model (positive suspects).

Each method is a registry entry ``fn(model, data, seed, **kwargs) -> PixelModel`` that returns a
new model and leaves its input untouched. Fine-tuning follows Adi et al., "Turning your weakness
into a strength: watermarking deep neural networks by backdooring" (USENIX Security 2018):
FTLL, FTAL, RTLL, RTAL. Pruning and quantization follow the post-processing of IPGuard (Cao, Jia
& Gong, AsiaCCS 2021, §5).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ipguard.config import TrainingCfg
from ipguard.data import Split
from ipguard.errors import ConfigError
from ipguard.io import pack_int8, unpack_int8
from ipguard.models import HALF_STORAGE, PixelModel, get_classifier
from ipguard.registry import Registry
from ipguard.training import check_training, train

PostFn = Callable[..., PixelModel]
_fit = train  # the students' entries take a `train` key (as zoo entries do), which shadows the name
# Called as ``fn(model, data, seed, **entry)`` on a copy of the owner.
POSTPROCESS: Registry[PostFn] = Registry("post-processing", leading=("model", "data", "seed"))
register_postprocess = POSTPROCESS.register
RESERVED_KEYS = ("method", "family", "data", "seed")


def list_postprocess() -> list[str]:
    return POSTPROCESS.names()


def check_postprocess(name: str, kwargs: Mapping[str, object], where: str = "postprocess") -> PostFn:
    """The registered method ``name``, once its config keys are known to fit it."""
    return POSTPROCESS.check(name, kwargs, where)


def apply_postprocess(name: str, model: PixelModel, data: Split, seed: int, where: str = "postprocess", **kwargs: object) -> PixelModel:
    """Run method ``name`` on a copy of ``model``, after checking its keys."""
    return check_postprocess(name, kwargs, where)(model, data, seed, **kwargs)


def _finetune(
    model: PixelModel,
    data: Split,
    seed: int,
    *,
    last_layer_only: bool,
    reinit_last: bool,
    cfg: TrainingCfg,
    desc: str,
) -> PixelModel:
    out = copy.deepcopy(model)
    head = get_classifier(out.net)
    if reinit_last:
        torch.manual_seed(seed)
        for module in head.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    train(out, data.x, data.y, cfg, seed, parameters=list(head.parameters()) if last_layer_only else None, desc=desc)
    return out


def _finetune_cfg(
    where: str, *, epochs: int, lr: float, batch_size: int, optimizer: str, momentum: float, weight_decay: float,
    schedule: str, max_samples: int, augment: bool,
) -> TrainingCfg:
    """The training settings of a fine-tuning entry, checked before anything is copied or trained."""
    cfg = TrainingCfg(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                      weight_decay=weight_decay, schedule=schedule, max_samples=max_samples, augment=augment)
    check_training(cfg, where)
    return cfg


# Every fine-tuning entry takes the same training keys. Defaults: what the digits suite has always
# used (Adam, constant rate, the whole data each epoch, no augmentation). A realistic thief adds
# augmentation, SGD with momentum and weight decay, a cosine schedule (see conf/experiment/cifar10_shared).
def _register_finetune(name: str, last_layer_only: bool, reinit_last: bool, doc: str) -> PostFn:
    """Register one of Adi et al.'s four fine-tunings; they differ only in what is reset and trained."""

    def fn(
        model: PixelModel, data: Split, seed: int, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
        optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "constant",
        max_samples: int = 0, augment: bool = False,
    ) -> PixelModel:
        cfg = _finetune_cfg(name, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                            weight_decay=weight_decay, schedule=schedule, max_samples=max_samples, augment=augment)
        return _finetune(model, data, seed, last_layer_only=last_layer_only, reinit_last=reinit_last, cfg=cfg, desc=name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return register_postprocess(name)(fn)


ftll = _register_finetune("ftll", True, False, "Fine-tune the last layer only (Adi et al. 2018, FTLL).")
ftal = _register_finetune("ftal", False, False, "Fine-tune all layers (Adi et al. 2018, FTAL).")
rtll = _register_finetune("rtll", True, True, "Re-initialise the last layer and train only it (Adi et al. 2018, RTLL).")
rtal = _register_finetune("rtal", False, True, "Re-initialise the last layer, then train all layers (Adi et al. 2018, RTAL).")


def prunable(net: nn.Module) -> list[torch.Tensor]:
    """The weight tensors that pruning and quantization act on: convolution and linear weights."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def _check_prune(where: str, amount: float, scope: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ConfigError(f"{where}.amount: must lie in [0, 1), got {amount!r}")
    if scope not in {"global", "layer"}:
        raise ConfigError(f"{where}.scope: must be 'global' or 'layer', got '{scope}'")


@torch.no_grad()
def prune_in_place(net: nn.Module, amount: float, scope: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero the ``amount`` share of smallest-magnitude weights of ``net``; returns ``(weight, mask)``
    pairs (mask 1 where a weight is kept, in the weight's dtype) so that training can keep them."""
    weights = prunable(net)
    groups = [weights] if scope == "global" else [[w] for w in weights]
    masks: list[tuple[torch.Tensor, torch.Tensor]] = []
    for group in groups:
        flat = torch.cat([w.detach().abs().flatten() for w in group])
        k = int(round(amount * flat.numel()))
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:k]] = False
        offset = 0
        for w in group:
            n = w.numel()
            mask = keep[offset : offset + n].view_as(w).to(w.dtype)
            w.mul_(mask)
            masks.append((w, mask))
            offset += n
    return masks


@register_postprocess("prune")
def prune(model: PixelModel, data: Split, seed: int, amount: float = 0.5, scope: str = "global") -> PixelModel:
    """Magnitude pruning: zero the ``amount`` share of weights with the smallest absolute value.

    ``scope="global"`` ranks all convolution and linear weights together (IPGuard §5: "prune the
    c% parameters with the smallest absolute values"); ``"layer"`` prunes each layer by the same
    share. Biases are kept. Exactly ``round(amount × count)`` weights become zero, ties broken
    by position, so the share asked for is the share removed.
    """
    _check_prune("prune", amount, scope)
    out = copy.deepcopy(model)
    prune_in_place(out.net, amount, scope)
    return out


@register_postprocess("prune_finetune")
def prune_finetune(
    model: PixelModel, data: Split, seed: int, amount: float = 0.5, scope: str = "global",
    epochs: int = 2, lr: float = 1e-3, batch_size: int = 64, optimizer: str = "adam", momentum: float = 0.9,
    weight_decay: float = 0.0, schedule: str = "constant", max_samples: int = 0, augment: bool = False,
) -> PixelModel:
    """Prune, then fine-tune all layers with the pruned weights held at zero (the usual
    prune-and-retrain of Han et al., NeurIPS 2015, used as an evasion by Liu et al., "Fine-Pruning",
    RAID 2018): magnitude pruning as :func:`prune`, then FTAL on ``data`` with the mask
    re-applied after every step, so the share pruned is the share that stays zero."""
    _check_prune("prune_finetune", amount, scope)
    cfg = _finetune_cfg("prune_finetune", epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                        weight_decay=weight_decay, schedule=schedule, max_samples=max_samples, augment=augment)
    out = copy.deepcopy(model)
    kept = prune_in_place(out.net, amount, scope)

    def reapply() -> None:
        with torch.no_grad():
            for w, m in kept:
                w.mul_(m)

    train(out, data.x, data.y, cfg, seed, desc="prune_finetune", after_step=reapply)
    return out


@register_postprocess("quantize_int8")
def quantize_int8(model: PixelModel, data: Split, seed: int) -> PixelModel:
    """Post-training weight quantization to int8 (per output channel, symmetric).

    The model computes with the dequantized weights, so its outputs are those of the int8
    weights it is stored with; activations stay in float32.
    """
    out = copy.deepcopy(model)
    packed = pack_int8(out.net.state_dict())
    out.net.load_state_dict(unpack_int8(packed))
    out.storage = "int8"
    return out


def _sixteen_bit(model: PixelModel, storage: str, compute: str) -> PixelModel:
    if compute not in {"half", "float32"}:
        raise ConfigError(f"{storage}.compute: must be 'half' or 'float32', got '{compute}'")
    out = copy.deepcopy(model)
    out.net.to(HALF_STORAGE[storage])
    if compute == "float32":
        out.net.float()
    out.storage = storage
    return out


@register_postprocess("float16")
def float16(model: PixelModel, data: Split, seed: int, compute: str = "half") -> PixelModel:
    """Half precision: weights stored in float16; arithmetic in float16 too (``compute="half"``),
    or in float32 on the rounded weights (``compute="float32"``: CPUs run half convolutions
    about 15 times slower than float32)."""
    return _sixteen_bit(model, "float16", compute)


@register_postprocess("bfloat16")
def bfloat16(model: PixelModel, data: Split, seed: int, compute: str = "half") -> PixelModel:
    """bfloat16 (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training"): weights
    stored with float32's range but an 8-bit significand, the format accelerators and many
    deployed models use; a coarser rounding of every weight than float16's. Arithmetic in
    bfloat16 (``compute="half"``) or in float32 on the rounded weights (``compute="float32"``)."""
    return _sixteen_bit(model, "bfloat16", compute)


@register_postprocess("evade")
def evade(model: PixelModel, data: Split, seed: int, transform: str = "jpeg", params: dict | None = None) -> PixelModel:
    """The owner's copy behind an input transformation (:mod:`ipguard.transforms`): JPEG, Gaussian
    noise, bit-depth reduction, median filtering or random resizing and padding, the defences
    against adversarial examples that a thief may put in front of a stolen model to wash out
    boundary fingerprints (which are adversarial examples of the owner). ``params``: the
    transformation's own keyword arguments; a random one without a ``seed`` gets the entry's."""
    from ipguard.transforms import TRANSFORMS, InputTransform

    kwargs = dict(params or {})
    fn = TRANSFORMS.get(transform, "evade.transform")
    if "seed" in inspect.signature(fn).parameters:
        kwargs.setdefault("seed", seed)
    out = copy.deepcopy(model)
    out.input_transform = InputTransform(transform, "evade.params", **kwargs)
    return out


def fresh_student(
    model: PixelModel, seed: int, arch: str | None, arch_kwargs: Mapping[str, object] | None, x: torch.Tensor,
) -> PixelModel:
    """A freshly initialised network: the owner's architecture, or ``arch`` with ``arch_kwargs``
    (with its data-dependent initialisation from the thief's images ``x``, if it has one)."""
    from ipguard.models import create_model, init_from_data

    if model.num_classes is None or model.input_shape is None or (arch is None and model.arch is None):
        raise ConfigError("distillation: the owner's architecture is unknown (not built by build_model); give student_arch")
    name, kwargs = (arch, dict(arch_kwargs or {})) if arch is not None else (str(model.arch), dict(model.arch_kwargs))
    torch.manual_seed(seed)
    net = create_model(name, model.num_classes, model.input_shape, where="postprocess.student_arch", **kwargs)
    student = PixelModel(net, model.mean.flatten().tolist(), model.std.flatten().tolist()).to(model.mean.device)
    student.arch, student.arch_kwargs = name, kwargs
    student.num_classes, student.input_shape = model.num_classes, model.input_shape
    init_from_data(student, x)
    return student


def thief_images(x: torch.Tensor, queries: int | None, seed: int, where: str) -> torch.Tensor:
    """The images a thief with a budget of ``queries`` owner queries trains on: a seeded random
    subset of ``x`` of that size (all of ``x`` when ``queries`` is None). The budget decides what
    of the owner's behaviour can reach a student at all."""
    if queries is None:
        return x
    if isinstance(queries, bool) or not isinstance(queries, int) or not 0 < queries <= x.shape[0]:
        raise ConfigError(f"{where}.queries: must be an integer in [1, {x.shape[0]}] (the thief's images), got {queries!r}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 0xB0D))
    return x[order[:queries].sort().values]


@torch.no_grad()
def _owner_outputs(model: PixelModel, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    device = model.mean.device
    return torch.cat([model(x[i : i + batch].to(device)).cpu() for i in range(0, x.shape[0], batch)])


def soft_label_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-label loss, scaled by T² so that its gradients keep their size."""
    return torch.nn.functional.kl_div(
        torch.log_softmax(logits / temperature, 1), torch.softmax(teacher / temperature, 1), reduction="batchmean"
    ) * temperature**2


def student_cfg(
    where: str, training: Mapping[str, object] | None, train_overrides: Mapping[str, object] | None = None, **explicit: object,
) -> TrainingCfg:
    """A student's training settings: Adam for 20 epochs of batch 64 at 1e-3, then the keys of
    ``training`` (``training: ${training}`` in a config gives students the zoo's own recipe), then
    those of ``train`` (the entry's own changes to that recipe, as a zoo entry's ``train``), then
    the entry's ``epochs``, ``lr``, ``batch_size``, ``optimizer`` where given."""
    from ipguard.config import merge_into

    base = TrainingCfg(epochs=20, lr=1e-3, batch_size=64, optimizer="adam")
    given = {k: v for k, v in explicit.items() if v is not None}
    cfg = merge_into(base, dict(training or {}), f"{where}.training")
    cfg = merge_into(cfg, dict(train_overrides or {}), f"{where}.train")
    cfg = merge_into(cfg, given, where)
    check_training(cfg, where)
    return cfg


@register_postprocess("distill")
def distill(
    model: PixelModel, data: Split, seed: int, student_arch: str | None = None, student_kwargs: dict | None = None,
    temperature: float = 4.0, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
    optimizer: str | None = None, training: dict | None = None, train: dict | None = None, queries: int | None = None,
) -> PixelModel:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015): a fresh student fitted to the owner's
    softened outputs on ``data`` (labels unused). Same architecture by default, or ``student_arch``;
    ``training`` overrides the other training keys (schedule, augmentation, ...): augmented images
    get the owner's outputs on the images as they are, as a thief querying once would have.
    ``queries``: the thief's budget, a seeded subset of ``data`` of that many images (:func:`thief_images`)."""
    if temperature <= 0:
        raise ConfigError(f"distill.temperature: must be > 0, got {temperature}")
    cfg = student_cfg("distill", training, train, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer)
    x = thief_images(data.x, queries, seed, "distill")
    student = fresh_student(model, seed, student_arch, student_kwargs, x)
    _fit(student, x, _owner_outputs(model, x), cfg, seed, desc="distill",
          loss=functools.partial(soft_label_loss, temperature=temperature))
    return student


@register_postprocess("extract")
def extract(
    model: PixelModel, data: Split, seed: int, student_arch: str | None = None, student_kwargs: dict | None = None,
    epochs: int | None = None, lr: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
    training: dict | None = None, train: dict | None = None, queries: int | None = None,
) -> PixelModel:
    """Label-only model extraction: a surrogate trained on the owner's predicted labels (no
    probabilities) of unlabeled ``data`` (Tramèr et al., USENIX Security 2016; Orekondy et al. 2019).
    ``training`` overrides the other training keys and ``queries`` is the thief's budget, as for
    :func:`distill`."""
    cfg = student_cfg("extract", training, train, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer)
    x = thief_images(data.x, queries, seed, "extract")
    student = fresh_student(model, seed, student_arch, student_kwargs, x)
    labels = _owner_outputs(model, x).argmax(1)
    _fit(student, x, labels, cfg, seed, desc="extract")
    return student


def pgd_perturb(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: float, step: float, steps: int, gen: torch.Generator,
) -> torch.Tensor:
    """L-infinity PGD from a random start (Madry et al., ICLR 2018) in pixel space, kept in [0, 1],
    pushing away from labels ``y`` (None: the model's own labels at the random start).

    The model is put in eval mode while the attack runs (BatchNorm statistics untouched) and back
    in train mode afterwards; the returned batch carries no graph.
    """
    was_training = model.training
    model.eval()
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps
    adv = (x + noise).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        if y is None:
            # The first step's forward pass labels the random start: a separate clean forward
            # pass would cost a quarter of an adversarial student's training for the same labels
            # almost everywhere (the start lies within eps of the clean image).
            y = logits.detach().argmax(1)
        loss = nn.functional.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return adv.detach()


ATTACK_LABELS = ("predicted", "owner")


def adversarial_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int, gen: torch.Generator,
    attack_labels: str = "predicted", fraction: float = 1.0,
) -> torch.Tensor:
    """The batch an adversarially trained student sees: its first ``fraction`` (at least one image)
    replaced by :func:`pgd_perturb` examples, the rest left clean. The attack pushes away from
    ``y`` (``attack_labels="owner"``) or from the model's own labels at the attack's random start
    (``"predicted"``), computed in eval mode as the attack sees the model."""
    m = max(1, round(fraction * x.shape[0]))
    target = y[:m] if attack_labels == "owner" else None
    return torch.cat([pgd_perturb(model, x[:m], target, eps, step, steps, gen), x[m:]])


@register_postprocess("extract_adv")
def extract_adv(
    model: PixelModel, data: Split, seed: int, student_arch: str | None = None, student_kwargs: dict | None = None,
    epochs: int | None = None, lr: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
    training: dict | None = None, train: dict | None = None, eps: float = 8 / 255, step: float = 2 / 255, steps: int = 3,
    attack_labels: str = "predicted", adversarial_fraction: float = 1.0,
) -> PixelModel:
    """Adversarially trained extraction: label-only extraction (:func:`extract`) where the student
    trains on PGD adversarial examples of its own (Madry et al., ICLR 2018) labelled with the
    owner's labels of the clean images. The family that QuRD and IrisFP report boundary
    fingerprints at chance on: adversarial training moves the student's boundary away from the
    owner's. ``eps`` and ``step`` are in pixels of [0, 1]; each step costs ``steps`` extra
    forward-backward passes.

    ``attack_labels``: the labels the attack pushes away from. ``"predicted"`` (the student's own
    current labels) avoids *label leaking* (Kurakin, Goodfellow & Bengio, ICLR 2017): a one-step
    attack on the training label writes that label into the perturbation, and a student that
    learns to read it fits the adversarial batches while its clean accuracy collapses (an
    airbench student at eps 8/255: 23 % on clean test images after 3 epochs of 10,000 images,
    against 55 % with predicted labels). ``"owner"`` attacks the owner's labels, as Madry et al.
    do with the true ones. ``adversarial_fraction``: the share of each batch replaced by its
    adversarial examples, the rest staying clean (Kurakin et al. train on half of each).
    """
    if not 0 < eps <= 1 or not 0 < step <= 1:
        raise ConfigError(f"extract_adv.eps / step: must lie in (0, 1], got {eps} / {step}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"extract_adv.steps: must be an integer >= 1, got {steps!r}")
    if attack_labels not in ATTACK_LABELS:
        raise ConfigError(f"extract_adv.attack_labels: must be one of {', '.join(ATTACK_LABELS)}, got {attack_labels!r}")
    if not 0 < adversarial_fraction <= 1:
        raise ConfigError(f"extract_adv.adversarial_fraction: must lie in (0, 1], got {adversarial_fraction}")
    cfg = student_cfg("extract_adv", training, train, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer)
    student = fresh_student(model, seed, student_arch, student_kwargs, data.x)
    labels = _owner_outputs(model, data.x).argmax(1)
    gen = torch.Generator().manual_seed(seed + 0xADF)
    _fit(student, data.x, labels, cfg, seed, desc="extract_adv",
          perturb=lambda net, xb, yb: adversarial_batch(net, xb, yb, eps, step, steps, gen, attack_labels, adversarial_fraction))
    return student
