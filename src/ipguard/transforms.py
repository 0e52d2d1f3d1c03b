"""Input transformations a thief puts in front of a stolen copy to evade fingerprints.

Each one maps a batch of pixels in [0, 1] (N, C, H, W) to another such batch; the copy then
answers the transformed images. They are the input-transformation defences against adversarial
examples (Guo, Rana, Cissé & van der Maaten, "Countering Adversarial Images using Input
Transformations", ICLR 2018: JPEG, bit-depth reduction; Xu, Evans & Qi, "Feature Squeezing",
NDSS 2018: bit depth, median smoothing; Xie et al., "Mitigating Adversarial Effects Through
Randomization", ICLR 2018: random resizing and padding) turned against boundary fingerprints,
which are adversarial examples of the owner. A transformation that destroys a fingerprint but
keeps the copy's accuracy is an evasion (issue 12: which fingerprints survive those that keep
accuracy within 2 points).

The random ones draw from a generator seeded with ``seed`` at every call, so a model file gives
the same answers to the same batch (the project is deterministic); a live service would draw
fresh noise, which the repeated queries of ``ipguard verify --url`` see.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipguard.errors import ConfigError
from ipguard.registry import Registry

Transform = Callable[..., torch.Tensor]
TRANSFORMS: Registry[Transform] = Registry("input transformation", leading=("x",))
register_transform = TRANSFORMS.register


@register_transform("jpeg")
def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG compression at ``quality`` (1-100; Pillow's libjpeg, 4:2:0 chroma subsampling)."""
    from PIL import Image

    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"jpeg.quality: must be an integer in 1..100, got {quality!r}")
    pixels = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    out = []
    for img in pixels:
        mode = "L" if img.shape[2] == 1 else "RGB"
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0] if mode == "L" else img, mode).save(buf, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.uint8)
        out.append(decoded.reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(x.device)


@register_transform("noise")
def noise(x: torch.Tensor, sigma: float = 2 / 255, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of standard deviation ``sigma`` (pixels of [0, 1]), clipped to [0, 1]."""
    if not 0 < sigma <= 1:
        raise ConfigError(f"noise.sigma: must lie in (0, 1], got {sigma}")
    gen = torch.Generator().manual_seed(int(seed))
    return (x + sigma * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)


@register_transform("bit_depth")
def bit_depth(x: torch.Tensor, bits: int = 5) -> torch.Tensor:
    """Each pixel rounded to ``bits`` bits (2 ** bits levels)."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bit_depth.bits: must be an integer in 1..8, got {bits!r}")
    levels = 2**bits - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


@register_transform("median")
def median(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Median filter over ``kernel`` x ``kernel`` neighbourhoods (reflect padding)."""
    if not isinstance(kernel, int) or kernel < 2:
        raise ConfigError(f"median.kernel: must be an integer >= 2, got {kernel!r}")
    lo, hi = (kernel - 1) // 2, kernel // 2
    padded = F.pad(x, (lo, hi, lo, hi), mode="reflect")
    patches = padded.unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H, W, k, k
    return patches.reshape(*patches.shape[:4], -1).median(dim=-1).values


@register_transform("resize_pad")
def resize_pad(x: torch.Tensor, min_scale: float = 0.85, seed: int = 0) -> torch.Tensor:
    """Random resizing and padding (Xie et al., ICLR 2018), at the input's own size: each image
    shrunk to a random side in [``min_scale``, 1] of the original (bilinear), then placed at a
    random offset on a black canvas of the original size."""
    if not 0 < min_scale <= 1:
        raise ConfigError(f"resize_pad.min_scale: must lie in (0, 1], got {min_scale}")
    gen = torch.Generator().manual_seed(int(seed))
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(n):
        scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=gen))
        hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
        small = F.interpolate(x[i : i + 1], size=(hh, ww), mode="bilinear", align_corners=False, antialias=True)
        top = int(torch.randint(0, h - hh + 1, (), generator=gen))
        left = int(torch.randint(0, w - ww + 1, (), generator=gen))
        out[i, :, top : top + hh, left : left + ww] = small[0]
    return out.clamp(0, 1)


class InputTransform(nn.Module):
    """A transformation of :data:`TRANSFORMS` with its keyword arguments, as a module (no weights)."""

    def __init__(self, kind: str, where: str = "input_transform", **kwargs: Any) -> None:
        super().__init__()
        self.fn = TRANSFORMS.check(kind, kwargs, where, name_where=f"{where}.kind")
        self.kind, self.kwargs = kind, dict(kwargs)
        try:  # values checked now, not at the first query
            self.fn(torch.zeros(1, 1, 4, 4), **self.kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x, **self.kwargs)

    def spec(self) -> dict[str, Any]:
        """What the sidecar records: ``{"kind": ..., **kwargs}``."""
        return {"kind": self.kind, **self.kwargs}


def from_spec(spec: Mapping[str, Any], where: str = "input_transform") -> InputTransform:
    """The :class:`InputTransform` a sidecar's ``input_transform`` describes."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise ConfigError(f"{where}: must be an object with a 'kind' (one of {', '.join(TRANSFORMS.names())})")
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    return InputTransform(spec["kind"], where, **kwargs)
