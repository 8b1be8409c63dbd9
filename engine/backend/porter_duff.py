"""Alpha compositing: Porter-Duff operators and splitting / joining an image's alpha channel.

ComfyUI's conventions: an IMAGE is float ``[B, H, W, C]`` in 0..1 and transparency travels as a MASK
``[B, H, W]`` that is 1 where the pixel is *transparent* (``mask = 1 - alpha``), as LoadImage makes it.
The operators work on premultiplied colour (``c * a``) and return straight colour again, with alpha
turned back into a mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.latents import repeat_to_batch
from engine.backend.masks import mask_3d
from engine.backend.resample import resize

__all__ = ["PORTER_DUFF_MODES", "join_image_with_alpha", "porter_duff", "porter_duff_composite",
           "split_image_with_alpha"]

#: Below this output alpha a pixel counts as fully transparent (its colour becomes 0).
_ALPHA_EPSILON = 1e-5

#: ``(src colour, src alpha, dst colour, dst alpha) -> (out alpha, out colour)``, all premultiplied.
_Operator = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _union(sa: Tensor, da: Tensor) -> Tensor:
    """Alpha of the union of two coverages: ``sa + da - sa * da``."""
    return sa + da - sa * da


def _add(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return (sa + da).clamp(0.0, 1.0), (sc + dc).clamp(0.0, 1.0)


def _clear(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return torch.zeros_like(da), torch.zeros_like(dc)


def _darken(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return _union(sa, da), (1 - da) * sc + (1 - sa) * dc + torch.minimum(sc, dc)


def _lighten(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return _union(sa, da), (1 - da) * sc + (1 - sa) * dc + torch.maximum(sc, dc)


def _overlay(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    dark = 2 * sc * dc
    light = sa * da - 2 * (da - sc) * (sa - dc)
    return _union(sa, da), torch.where(2 * dc < da, dark, light)


def _screen(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return _union(sa, da), sc + dc - sc * dc


def _multiply(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return sa * da, sc * dc


def _over(top_c: Tensor, top_a: Tensor, low_c: Tensor, low_a: Tensor) -> tuple[Tensor, Tensor]:
    """``top`` over ``low``."""
    return top_a + (1 - top_a) * low_a, top_c + (1 - top_a) * low_c


def _atop(top_c: Tensor, top_a: Tensor, low_c: Tensor, low_a: Tensor) -> tuple[Tensor, Tensor]:
    """``top`` atop ``low``: ``low``'s coverage, ``top`` shown inside it."""
    return low_a, low_a * top_c + (1 - top_a) * low_c


def _in(top_c: Tensor, top_a: Tensor, low_c: Tensor, low_a: Tensor) -> tuple[Tensor, Tensor]:
    """``top`` where ``low`` covers."""
    return top_a * low_a, top_c * low_a


def _out(top_c: Tensor, top_a: Tensor, low_c: Tensor, low_a: Tensor) -> tuple[Tensor, Tensor]:
    """``top`` where ``low`` does not cover."""
    return (1 - low_a) * top_a, (1 - low_a) * top_c


def _xor(sc: Tensor, sa: Tensor, dc: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    return (1 - da) * sa + (1 - sa) * da, (1 - da) * sc + (1 - sa) * dc


def _swap(op: _Operator) -> _Operator:
    """The destination-first version of a source-first operator (DST_OVER from SRC_OVER, ...)."""
    return lambda sc, sa, dc, da: op(dc, da, sc, sa)


#: ComfyUI's modes, in its order (the combo lists them so; the default is DST).
_OPERATORS: dict[str, _Operator] = {
    "ADD": _add,
    "CLEAR": _clear,
    "DARKEN": _darken,
    "DST": lambda sc, sa, dc, da: (da, dc),
    "DST_ATOP": _swap(_atop),
    "DST_IN": _swap(_in),
    "DST_OUT": _swap(_out),
    "DST_OVER": _swap(_over),
    "LIGHTEN": _lighten,
    "MULTIPLY": _multiply,
    "OVERLAY": _overlay,
    "SCREEN": _screen,
    "SRC": lambda sc, sa, dc, da: (sa, sc),
    "SRC_ATOP": _atop,
    "SRC_IN": _in,
    "SRC_OUT": _out,
    "SRC_OVER": _over,
    "XOR": _xor,
}

PORTER_DUFF_MODES: tuple[str, ...] = tuple(_OPERATORS)


def porter_duff(source: Tensor, source_mask: Tensor, destination: Tensor, destination_mask: Tensor,
                mode: str) -> tuple[Tensor, Tensor]:
    """Composite straight-colour images given their transparency masks (1 = transparent).

    ``source``/``destination`` are ``[..., C]``; the masks ``[..., 1]`` (broadcast over channels).
    Returns ``(colour clamped to 0..1, mask)``; colour is 0 where the result is fully transparent.
    """
    operator = _OPERATORS.get(mode)
    if operator is None:
        raise ValueError(f"unknown Porter-Duff mode {mode!r}; use one of {', '.join(PORTER_DUFF_MODES)}")
    sa, da = 1.0 - source_mask, 1.0 - destination_mask
    out_alpha, out_colour = operator(source * sa, sa, destination * da, da)
    straight = torch.where(out_alpha > _ALPHA_EPSILON, out_colour / out_alpha, torch.zeros_like(out_colour))
    return straight.clamp(0.0, 1.0), 1.0 - out_alpha


def _fit(x: Tensor, height: int, width: int) -> Tensor:
    """``[B, H, W, C]`` resized (bicubic, centre crop) to ``height x width`` when its size differs."""
    if x.shape[1:3] == (height, width):
        return x
    return resize(x.movedim(-1, 1), width, height, "bicubic", "center").movedim(1, -1)


def porter_duff_composite(source: Tensor, source_alpha: Tensor, destination: Tensor, destination_alpha: Tensor,
                          mode: str) -> tuple[Tensor, Tensor]:
    """ComfyUI's PorterDuffImageComposite over batches: ``(IMAGE, MASK)``.

    The batch is the shortest of the four inputs. The destination's mask, then the source and its
    mask, are resized (bicubic, centre crop) to the destination image's size.
    """
    if source.shape[-1] != destination.shape[-1]:
        raise ValueError(f"source has {source.shape[-1]} channels but destination has {destination.shape[-1]}; "
                         "give both images the same channels (e.g. drop alpha with SplitImageWithAlpha)")
    source_alpha, destination_alpha = mask_3d(source_alpha), mask_3d(destination_alpha)
    batch = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
    height, width = destination.shape[1], destination.shape[2]
    dst_mask = _fit(destination_alpha[:batch, ..., None], height, width)
    src = _fit(source[:batch], height, width)
    src_mask = _fit(source_alpha[:batch, ..., None], height, width)
    image, mask = porter_duff(src, src_mask, destination[:batch], dst_mask, mode)
    return image, mask[..., 0]


def split_image_with_alpha(image: Tensor) -> tuple[Tensor, Tensor]:
    """``(RGB [B, H, W, 3], MASK)``: the mask is ``1 - alpha``, all 0 for an image without alpha."""
    rgb = image[..., :3]
    if image.shape[-1] > 3:
        return rgb, 1.0 - image[..., 3]
    return rgb, torch.zeros_like(image[..., 0])


def join_image_with_alpha(image: Tensor, alpha: Tensor) -> Tensor:
    """RGBA ``[B, H, W, 4]``: the image's RGB with ``1 - alpha`` (a MASK, resized bilinearly) as alpha.

    Both batches repeat cyclically to the longer one.
    """
    alpha = mask_3d(alpha)
    batch = max(len(image), len(alpha))
    image, alpha = repeat_to_batch(image, batch), repeat_to_batch(alpha, batch)
    if alpha.shape[1:] != image.shape[1:3]:
        alpha = F.interpolate(alpha[:, None], size=tuple(image.shape[1:3]), mode="bilinear")[:, 0]
    return torch.cat((image[..., :3], (1.0 - alpha)[..., None].to(image.dtype)), dim=-1)
