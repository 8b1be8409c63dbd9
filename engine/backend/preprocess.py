"""Hint preprocessors for ControlNets, in torch (no OpenCV): Canny edges, a threshold (scribble) map,
and fitting a hint to a latent's grid.

:func:`canny` follows the classic algorithm (Canny 1986) with the conventions ComfyUI's ``Canny``
node gets from kornia, so its thresholds mean the same: grayscale (ITU-R 601 luma), 5x5 Gaussian blur
(sigma 1, reflected borders), unnormalised Sobel gradients (replicated borders), magnitude
``sqrt(gx^2 + gy^2 + 1e-6)``, non-maximum suppression along the gradient direction quantised to
45 degrees (ties within :data:`TIE` go to one side, so drawn edges come out one pixel wide), then
hysteresis: pixels above ``high`` are edges, and pixels above ``low`` join them when 8-connected to
an edge (grown iteratively until nothing changes).

The ``*_image`` functions take and return IMAGE ``[B, H, W, C]``; the rest work on ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.control_apply import fit_hint

__all__ = ["TIE", "canny", "canny_image", "fit_hint_image", "gaussian_blur", "grayscale", "hysteresis",
           "non_max_suppression", "sobel", "threshold_image"]

_LUMA = (0.299, 0.587, 0.114)
_EPS = 1e-6
#: Magnitudes closer than this count as equal in non-maximum suppression (float noise on drawn edges).
TIE = 1e-5


def grayscale(images: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, 1, H, W]``: luma of RGB(A), the channel itself for one channel."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    return (images[:, :3] * weights).sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, kernel_size: int = 5, sigma: float = 1.0) -> Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` with reflected borders."""
    offsets = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = kernel_size // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode=mode), kernel.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode=mode), kernel.reshape(1, 1, -1, 1))


def sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical Sobel gradients of ``[B, 1, H, W]`` (unnormalised, replicated borders)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx.reshape(1, 1, 3, 3))
    gy = F.conv2d(padded, kx.t().reshape(1, 1, 3, 3))
    return gx, gy


def _neighbour(padded: Tensor, dy: int, dx: int) -> Tensor:
    height, width = padded.shape[-2] - 2, padded.shape[-1] - 2
    return padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def non_max_suppression(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """``magnitude`` where it is a maximum along the gradient direction (quantised to 0/45/90/135
    degrees), else 0. Ties keep the pixel on the negative side, so a symmetric edge stays one pixel wide."""
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = torch.round(angle / 45.0).long() % 4  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    padded = F.pad(magnitude, (1, 1, 1, 1))
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = _neighbour(padded, dy, dx), _neighbour(padded, -dy, -dx)
        keep |= (sector == index) & (magnitude > ahead + TIE) & (magnitude >= behind - TIE)
    return magnitude * keep


def hysteresis(strong: Tensor, weak: Tensor) -> Tensor:
    """Grow ``strong`` (bool ``[B, 1, H, W]``) through 8-connected ``weak`` pixels until it stops changing."""
    edges = strong.float()
    allowed = (weak | strong).float()
    while True:
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny(images: Tensor, low_threshold: float, high_threshold: float, kernel_size: int = 5,
          sigma: float = 1.0) -> Tensor:
    """Canny edges of ``[B, C, H, W]`` images in 0..1 as a ``[B, 1, H, W]`` map of 0 and 1."""
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})")
    gray = gaussian_blur(grayscale(images.float()), kernel_size, sigma)
    gx, gy = sobel(gray)
    magnitude = torch.sqrt(gx * gx + gy * gy + _EPS)
    thin = non_max_suppression(magnitude, gx, gy)
    return hysteresis(thin > high_threshold, thin > low_threshold)


def _grey_to_rgb(planes: Tensor) -> Tensor:
    """``[B, 1, H, W]`` -> IMAGE ``[B, H, W, 3]``."""
    return planes.expand(-1, 3, -1, -1).movedim(1, -1).contiguous()


def canny_image(image: Tensor, low_threshold: float, high_threshold: float) -> Tensor:
    """Canny edges of an IMAGE as an IMAGE: white edges on black."""
    return _grey_to_rgb(canny(image.movedim(-1, 1), low_threshold, high_threshold))


def threshold_image(image: Tensor, threshold: float) -> Tensor:
    """Black and white IMAGE: 1 where the luma is above ``threshold``."""
    luma = grayscale(image.movedim(-1, 1).float())
    return _grey_to_rgb((luma > threshold).float())


def fit_hint_image(image: Tensor, height: int, width: int) -> Tensor:
    """An IMAGE fitted to ``height x width`` pixels as sampling fits hints (centre crop, nearest-exact)."""
    return fit_hint(image.movedim(-1, 1).float(), height, width).movedim(1, -1).contiguous()
