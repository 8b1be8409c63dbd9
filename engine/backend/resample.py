"""Resampling ``[B, C, H, W]`` tensors with ComfyUI's upscale methods.

nearest-exact, bilinear, area and bicubic go through ``torch.nn.functional.interpolate``; lanczos
through PIL (per channel, 32-bit float); bislerp blends neighbouring channel vectors with slerps so
latent vectors keep their length. ``crop="center"`` first crops to the target aspect ratio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["CROP_METHODS", "RESAMPLE_METHODS", "bislerp", "center_crop_to_aspect", "lanczos", "resize", "slerp"]

#: The crops :func:`resize` knows.
CROP_METHODS: tuple[str, ...] = ("disabled", "center")
_TORCH_MODES = frozenset({"nearest-exact", "bilinear", "area", "bicubic"})
#: Every method :func:`resize` knows.
RESAMPLE_METHODS: frozenset[str] = _TORCH_MODES | {"lanczos", "bislerp"}


def center_crop_to_aspect(x: Tensor, width: int, height: int) -> Tensor:
    """Crop the last two dims of ``x`` symmetrically to the aspect ratio ``width / height``."""
    old_h, old_w = x.shape[-2], x.shape[-1]
    if width <= 0 or height <= 0 or old_h == 0 or old_w == 0:
        return x
    old_aspect = old_w / old_h
    new_aspect = width / height
    if old_aspect > new_aspect:
        cut = round((old_w - old_h * new_aspect) / 2)
        return x[..., :, cut : old_w - cut]
    if old_aspect < new_aspect:
        cut = round((old_h - old_w / new_aspect) / 2)
        return x[..., cut : old_h - cut, :]
    return x


def resize(x: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resample ``x`` ``[B, C, H, W]`` to ``height x width`` with one of ComfyUI's methods.

    ``crop="center"`` first crops to the target aspect ratio so nothing is stretched.
    """
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    elif crop != "disabled":
        raise ValueError(f"unknown crop {crop!r}; use one of {', '.join(CROP_METHODS)}")
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    if method not in _TORCH_MODES:
        known = ", ".join([*sorted(_TORCH_MODES), "lanczos", "bislerp"])
        raise ValueError(f"unknown upscale method {method!r}; use one of {known}")
    return F.interpolate(x, size=(height, width), mode=method)


def lanczos(x: Tensor, width: int, height: int) -> Tensor:
    """Lanczos resampling through PIL, per channel in 32-bit float mode (no 8-bit rounding)."""
    planes = x.detach().to(device="cpu", dtype=torch.float32).numpy()
    out = np.empty((*planes.shape[:2], height, width), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, c]))
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of vectors along the last dim; magnitudes interpolate linearly.

    ``t`` broadcasts against ``a[..., :1]``. Zero vectors and (anti)parallel pairs, where the
    sphere gives no unique path, fall back to the linear blend.
    """
    eps = 1e-6
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = a / norm_a.clamp_min(eps)
    unit_b = b / norm_b.clamp_min(eps)
    cos_omega = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos_omega)
    sin_omega = torch.sin(omega)
    safe_sin = torch.where(sin_omega.abs() < eps, torch.ones_like(sin_omega), sin_omega)
    direction = (torch.sin((1.0 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / safe_sin
    magnitude = norm_a * (1.0 - t) + norm_b * t
    spherical = direction * magnitude
    linear = a + (b - a) * t
    degenerate = (sin_omega.abs() < eps) | (norm_a < eps) | (norm_b < eps)
    return torch.where(degenerate, linear, spherical)


def _source_positions(size_in: int, size_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour indices and blend weights for resampling one axis (half-pixel centres)."""
    pos = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5
    pos = pos.clamp(0.0, size_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=size_in - 1)
    return lo, hi, (pos - lo).to(torch.float32)


def bislerp(x: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resize whose blends are slerps of the channel vectors (ComfyUI's "bislerp").

    Each output pixel's channel vector is a slerp between its two neighbours along the width,
    then between those results along the height. Latent vectors keep their length instead of
    shrinking the way a linear blend of differing vectors does.
    """
    dtype = x.dtype
    v = x.to(torch.float32).movedim(1, -1)  # [B, H, W, C]
    lo, hi, t = _source_positions(v.shape[2], width)
    v = slerp(v[:, :, lo], v[:, :, hi], t.to(v.device)[:, None])
    lo, hi, t = _source_positions(v.shape[1], height)
    v = slerp(v[:, lo], v[:, hi], t.to(v.device)[:, None, None])
    return v.movedim(-1, 1).contiguous().to(dtype)
