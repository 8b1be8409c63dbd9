"""Conditioning entries prepared for sampling, and the UNet call that batches them.

A CONDITIONING value is ComfyUI's list of ``[embedding [1, T, D], extras]``; extras may hold
``pooled_output``, ``area`` (h, w, y, x in latent pixels), ``strength``, SDXL size fields and
``control``. :func:`prepare` turns each entry into a :class:`CondSpec` for one sampling run.

:class:`UNetApply` is the ``apply_model`` of :class:`engine.backend.guidance.ParameterizedModel`:
it receives the batch for every chunk (uncond, cond) and a list of CondSpecs per chunk, runs all
entries that share an area in ONE batched UNet forward (contexts of different lengths are repeated
to a common length, which leaves cross-attention unchanged), and combines the predictions of each
chunk weighted by strength over their areas (with a soft edge inside the latent), as ComfyUI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.backend.unet import UNetModel

#: Latent pixels over which an area's weight ramps up at edges inside the image.
AREA_FEATHER = 8

AdmFn = Callable[[Mapping[str, Any], int, int], Tensor | None]


@dataclass(frozen=True)
class CondSpec:
    """One conditioning entry ready for the UNet: context, adm vector, strength, area, control."""

    context: Tensor
    y: Tensor | None = None
    strength: float = 1.0
    area: tuple[int, int, int, int] | None = None
    control: Any = None


def prepare(conditioning: Sequence[Sequence[Any]], latent_shape: Sequence[int], *, device: torch.device,
            dtype: torch.dtype, adm: AdmFn | None = None) -> list[CondSpec]:
    """CondSpecs for a CONDITIONING list; ``adm(extras, width, height)`` builds SDXL's y vector."""
    height, width = int(latent_shape[-2]), int(latent_shape[-1])
    specs = []
    for embedding, extras in conditioning:
        area = _clip_area(extras.get("area"), height, width)
        y = adm(extras, width * 8, height * 8) if adm is not None else None
        specs.append(CondSpec(
            context=embedding.to(device=device, dtype=dtype),
            y=None if y is None else y.to(device=device, dtype=dtype),
            strength=float(extras.get("strength", 1.0)),
            area=area,
            control=extras.get("control")))
    return specs


def _clip_area(area: Any, height: int, width: int) -> tuple[int, int, int, int] | None:
    if area is None:
        return None
    h, w, y, x = (int(v) for v in area)
    y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
    h, w = max(1, min(h, height - y)), max(1, min(w, width - x))
    if (h, w, y, x) == (height, width, 0, 0):
        return None
    return h, w, y, x


def area_weight(area: tuple[int, int, int, int] | None, height: int, width: int, strength: float,
                like: Tensor) -> Tensor:
    """The weight map [1, 1, H, W] of an entry: strength inside its area, ramped at inner edges."""
    weight = torch.zeros((1, 1, height, width), device=like.device, dtype=like.dtype)
    if area is None:
        return weight.fill_(strength)
    h, w, y, x = area
    patch = torch.full((h, w), strength, device=like.device, dtype=like.dtype)
    feather = min(AREA_FEATHER, h // 4, w // 4)
    for i in range(feather):
        ramp = (i + 1) / (feather + 1)
        if y > 0:
            patch[i, :] *= ramp
        if y + h < height:
            patch[h - 1 - i, :] *= ramp
        if x > 0:
            patch[:, i] *= ramp
        if x + w < width:
            patch[:, w - 1 - i] *= ramp
    weight[0, 0, y:y + h, x:x + w] = patch
    return weight


def _repeat_tokens(context: Tensor, length: int) -> Tensor:
    return context.repeat(1, length // context.shape[1], 1) if context.shape[1] != length else context


class UNetApply:
    """``apply_model(x, timestep, conds)`` for a UNet, batching every entry that shares an area."""

    def __init__(self, unet: UNetModel, control_fn: Callable[..., Any] | None = None,
                 concat: Tensor | None = None) -> None:
        """``concat`` [B, k, H, W] is appended to the latent channels (inpainting models: mask + image)."""
        self.unet = unet
        self.control_fn = control_fn
        self.concat = concat

    def __call__(self, x: Tensor, timestep: Tensor, conds: Sequence[Sequence[CondSpec]], **_: Any) -> Tensor:
        chunks, steps = x.chunk(len(conds)), timestep.chunk(len(conds))
        height, width = x.shape[-2:]
        out = [torch.zeros_like(c) for c in chunks]
        total = [torch.zeros_like(c[:, :1]) for c in chunks]
        groups: dict[Any, list[tuple[int, CondSpec]]] = {}
        for index, specs in enumerate(conds):
            for spec in specs:
                groups.setdefault(spec.area, []).append((index, spec))
        for area, members in groups.items():
            preds = self._forward(chunks, steps, area, members)
            for (index, spec), pred in zip(members, preds, strict=True):
                weight = area_weight(area, height, width, spec.strength, pred)
                if area is None:
                    out[index] += pred * weight
                else:
                    h, w, y, x0 = area
                    padded = torch.zeros_like(out[index])
                    padded[..., y:y + h, x0:x0 + w] = pred
                    out[index] += padded * weight
                total[index] += weight
        return torch.cat([o / t.clamp_min(1e-8) for o, t in zip(out, total, strict=True)])

    def _forward(self, chunks: Sequence[Tensor], steps: Sequence[Tensor], area: tuple[int, int, int, int] | None,
                 members: list[tuple[int, CondSpec]]) -> list[Tensor]:
        xs, ts, contexts, ys = [], [], [], []
        for index, spec in members:
            chunk = chunks[index]
            if self.concat is not None:
                chunk = torch.cat([chunk, self.concat.to(chunk)], dim=1)
            if area is not None:
                h, w, y0, x0 = area
                chunk = chunk[..., y0:y0 + h, x0:x0 + w]
            xs.append(chunk)
            ts.append(steps[index])
            batch = chunk.shape[0]
            contexts.append(spec.context.expand(batch, -1, -1) if spec.context.shape[0] == 1 else spec.context)
            if spec.y is not None:
                ys.append(spec.y.expand(batch, -1) if spec.y.shape[0] == 1 else spec.y)
        length = math.lcm(*(c.shape[1] for c in contexts))
        context = torch.cat([_repeat_tokens(c, length) for c in contexts])
        x_in, t_in = torch.cat(xs), torch.cat(ts)
        y = torch.cat(ys) if ys else None
        control = self.control_fn(x_in, t_in, context, y, [spec for _, spec in members]) if self.control_fn else None
        pred = self.unet(x_in, t_in, context, y=y, control=control)
        return list(pred.split([c.shape[0] for c in xs]))


def concat_tokens(conditioning_to: Sequence[Sequence[Any]], source: Tensor) -> list[list[Any]]:
    """Every entry of ``conditioning_to`` with ``source``'s tokens appended (ConditioningConcat)."""
    return [[torch.cat([cond, source], dim=1), dict(extras)] for cond, extras in conditioning_to]


def zeroed(conditioning: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The conditioning with its embeddings and pooled outputs set to zero (ConditioningZeroOut)."""
    out: list[list[Any]] = []
    for cond, extras in conditioning:
        extras = dict(extras)
        if extras.get("pooled_output") is not None:
            extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
        out.append([torch.zeros_like(cond), extras])
    return out
