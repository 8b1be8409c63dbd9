"""Conditioning entries prepared for sampling, and the UNet call that batches them.

A CONDITIONING value is ComfyUI's list of ``[embedding [1, T, D], extras]``; extras may hold
``pooled_output``, ``area`` (h, w, y, x in latent pixels, or ``("percentage", h, w, y, x)`` as
fractions of the latent), ``strength``, ``mask`` ([B, H, W] at any size) with ``mask_strength`` and
``set_area_to_bounds``, ``start_percent`` / ``end_percent``, SDXL size fields, ``control`` and
``gligen`` (GLIGEN boxes, applied to the entry's rows only: engine.backend.gligen).
:func:`prepare` turns each entry into a :class:`CondSpec` for one sampling run, as ComfyUI's
``process_conds`` does: percentage areas are resolved against the latent size, masks resized to it
(bilinear), "mask bounds" sets the area to the mask's bounding box, and the percent range becomes a
sigma range through the model's ``percent_to_sigma``. :func:`pair_areas` gives every entry with an
area an opposite entry of the same area on the other side of CFG.

:class:`UNetApply` is the ``apply_model`` of :class:`engine.backend.guidance.ParameterizedModel`:
it receives the batch for every chunk (uncond, cond) and a list of CondSpecs per chunk, runs all
entries that share an area in ONE batched UNet forward (contexts of different lengths are repeated
to a common length, which leaves cross-attention unchanged), and combines the predictions of each
chunk weighted by :func:`entry_weight` (strength, times the mask, or a soft edge inside the latent
for a plain area), as ComfyUI does. :class:`ScheduledModel` wraps the denoiser around it: at each
step it keeps the entries whose sigma range holds the step's sigma and, like ComfyUI, gives a zero
denoised estimate where no entry weighs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.flow_apply import FLUX_DEFAULT_GUIDANCE, FlowTransformerCall
from engine.backend.gligen import gligen_patch
from engine.backend.hook_schedule import HookRunner
from engine.backend.unet import PatchContext, UNetModel

#: Latent pixels over which an area's weight ramps up at edges inside the image.
AREA_FEATHER = 8
#: The smallest side (latent pixels) of an area set from a mask's bounds (ComfyUI's).
MIN_BOUNDS = 8

Area = tuple[int, int, int, int]
AdmFn = Callable[[Mapping[str, Any], int, int], Tensor | None]
PercentToSigma = Callable[[float], float]


@dataclass(frozen=True)
class CondSpec:
    """One conditioning entry ready for the UNet.

    ``area`` (h, w, y, x) is clipped to the latent (None = all of it); ``mask`` is [B, H, W] at the
    latent's size, already multiplied by the mask strength; the entry takes part in a step only while
    ``sigma_end <= sigma <= sigma_start`` (None = unbounded).
    """

    context: Tensor
    y: Tensor | None = None
    strength: float = 1.0
    area: Area | None = None
    control: Any = None
    mask: Tensor | None = None
    sigma_start: float | None = None
    sigma_end: float | None = None
    gligen: Any = None
    #: Hooks (engine.models.hooks.HookGroup): the UNet predicts this entry with their LoRAs patched in.
    hooks: Any = None
    #: ConditioningSetDefaultCombine's entries: they weigh in only where the others of their side leave room.
    default: bool = False
    #: FluxGuidance's distilled guidance scale (Flux.1 dev); None: the model's default.
    guidance: float | None = None

    def active_at(self, sigma: float) -> bool:
        """Whether the entry takes part at ``sigma`` (ComfyUI's timestep_start / timestep_end test)."""
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        return not (self.sigma_end is not None and sigma < self.sigma_end)


def prepare(conditioning: Sequence[Sequence[Any]], latent_shape: Sequence[int], *, device: torch.device,
            dtype: torch.dtype, adm: AdmFn | None = None,
            percent_to_sigma: PercentToSigma | None = None) -> list[CondSpec]:
    """CondSpecs for a CONDITIONING list; ``adm(extras, width, height)`` builds SDXL's y vector.

    ``percent_to_sigma`` (the model sampling's) turns ``start_percent`` / ``end_percent`` into sigmas;
    it is needed only when an entry has them.
    """
    height, width = int(latent_shape[-2]), int(latent_shape[-1])
    specs = []
    for embedding, extras in conditioning:
        mask = _latent_mask(extras, height, width, device)
        area = resolve_area(extras.get("area"), height, width)
        if mask is not None and extras.get("set_area_to_bounds", False):
            area = mask_bounds(mask)
        y = adm(extras, width * 8, height * 8) if adm is not None else None
        sigma_start, sigma_end = _sigma_range(extras, percent_to_sigma)
        specs.append(CondSpec(
            context=embedding.to(device=device, dtype=dtype),
            y=None if y is None else y.to(device=device, dtype=dtype),
            strength=float(extras.get("strength", 1.0)),
            area=_clip_area(area, height, width),
            control=extras.get("control"),
            mask=None if mask is None else (mask * float(extras.get("mask_strength", 1.0))).to(dtype),
            sigma_start=sigma_start, sigma_end=sigma_end, gligen=extras.get("gligen"), hooks=extras.get("hooks"),
            default=bool(extras.get("default", False)),
            guidance=None if extras.get("guidance") is None else float(extras["guidance"])))
    return specs


def resolve_area(area: Any, height: int, width: int) -> Area | None:
    """An entry's area in latent pixels: ``("percentage", h, w, y, x)`` is scaled to the latent
    (sides at least 1, Python's rounding, as ComfyUI), an (h, w, y, x) tuple is kept."""
    if area is None:
        return None
    if isinstance(area[0], str):
        if area[0] != "percentage" or len(area) != 5:
            raise ValueError(f"conditioning area {area!r} is not understood: expected (h, w, y, x) in latent "
                             "pixels or ('percentage', h, w, y, x); make it with ConditioningSetArea(Percentage)")
        h, w, y, x = (float(v) for v in area[1:])
        return max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width)
    h, w, y, x = (int(v) for v in area)
    return h, w, y, x


def _latent_mask(extras: Mapping[str, Any], height: int, width: int, device: torch.device) -> Tensor | None:
    """The entry's mask as [B, H, W] float at the latent's size (bilinear, as ComfyUI resizes it)."""
    mask = extras.get("mask")
    if mask is None:
        return None
    mask = torch.as_tensor(mask).to(device=device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"a conditioning mask must be [B, H, W] (ConditioningSetMask's MASK); got shape "
                         f"{tuple(mask.shape)}")
    if tuple(mask.shape[1:]) != (height, width):
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear",
                             align_corners=False).squeeze(1)
    return mask


def mask_bounds(mask: Tensor) -> Area:
    """The bounding box (h, w, y, x) of the non-zero pixels of any mask of the batch, each side at
    least MIN_BOUNDS; (8, 8, 0, 0) for an all-zero mask (it weighs nothing anyway), as ComfyUI."""
    covered = mask.abs().amax(dim=0) != 0
    if not covered.any():
        return MIN_BOUNDS, MIN_BOUNDS, 0, 0
    rows, cols = covered.any(dim=1).nonzero(), covered.any(dim=0).nonzero()
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return max(MIN_BOUNDS, bottom - top + 1), max(MIN_BOUNDS, right - left + 1), top, left


def _sigma_range(extras: Mapping[str, Any], percent_to_sigma: PercentToSigma | None
                 ) -> tuple[float | None, float | None]:
    start, end = extras.get("start_percent"), extras.get("end_percent")
    clip_start, clip_end = extras.get("clip_start_percent"), extras.get("clip_end_percent")
    if clip_start is not None:  # a scheduled CLIP's range (SetClipHooks), within any range set on the entry
        start = max(float(clip_start), float(start or 0.0))
    if clip_end is not None:
        end = min(float(clip_end), float(1.0 if end is None else end))
    if start is None and end is None:
        return None, None
    if percent_to_sigma is None:
        raise ValueError("a conditioning entry has a timestep range (ConditioningSetTimestepRange) but no "
                         "percent_to_sigma was given to prepare(); pass the model sampling's")
    return (None if start is None else percent_to_sigma(float(start)),
            None if end is None else percent_to_sigma(float(end)))


def _clip_area(area: Area | None, height: int, width: int) -> Area | None:
    if area is None:
        return None
    h, w, y, x = area
    y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
    h, w = max(1, min(h, height - y)), max(1, min(w, width - x))
    if (h, w, y, x) == (height, width, 0, 0):
        return None
    return h, w, y, x


def pair_areas(positive: Sequence[CondSpec], negative: Sequence[CondSpec]
               ) -> tuple[list[CondSpec], list[CondSpec]]:
    """Give every entry with an area an opposite one of the same area (ComfyUI's process_conds).

    For an entry with an area, the other side gains a copy of it (area, mask, strength, range,
    control) carrying the context and y of that side's smallest entry containing the area (an entry
    without an area otherwise), unless that entry already has exactly this area. The uncond of an
    area is then predicted on the same crop as the cond.
    """
    pos, neg = list(positive), list(negative)
    for spec in list(pos):
        _add_opposite(neg, spec)
    for spec in list(neg):
        _add_opposite(pos, spec)
    return pos, neg


def _add_opposite(side: list[CondSpec], spec: CondSpec) -> None:
    if spec.area is None:
        return
    smallest: CondSpec | None = None
    for other in side:
        if other.area is None:
            smallest = other if smallest is None else smallest
        elif _inside(spec.area, other.area) and (
                smallest is None or smallest.area is None
                or smallest.area[0] * smallest.area[1] > other.area[0] * other.area[1]):
            smallest = other
    if smallest is None or smallest.area == spec.area:
        return
    side.append(replace(spec, context=smallest.context, y=smallest.y))


def _inside(inner: Area, outer: Area) -> bool:
    h, w, y, x = inner
    oh, ow, oy, ox = outer
    return y >= oy and x >= ox and y + h <= oy + oh and x + w <= ox + ow


def _feathered(area: Area, height: int, width: int, strength: float, like: Tensor) -> Tensor:
    """[1, 1, h, w]: strength, ramped at edges inside the latent over min(AREA_FEATHER, side // 4)
    pixels (row t of the ramp gets (t + 1) / ramp, as ComfyUI)."""
    h, w, y, x = area
    patch = torch.full((1, 1, h, w), strength, device=like.device, dtype=like.dtype)
    rows, cols = min(AREA_FEATHER, h // 4), min(AREA_FEATHER, w // 4)
    for i in range(rows):
        ramp = (i + 1) / rows
        if y > 0:
            patch[..., i, :] *= ramp
        if y + h < height:
            patch[..., h - 1 - i, :] *= ramp
    for i in range(cols):
        ramp = (i + 1) / cols
        if x > 0:
            patch[..., i] *= ramp
        if x + w < width:
            patch[..., w - 1 - i] *= ramp
    return patch


def entry_weight(spec: CondSpec, height: int, width: int, batch: int, like: Tensor) -> Tensor:
    """The weight of an entry's prediction over its area: [1 or batch, 1, h, w] (the area's size).

    strength times the mask (cropped to the area, tiled over the batch) when the entry has one;
    otherwise strength with a soft edge inside the latent (a plain area) or a constant (no area).
    """
    h, w, y, x = spec.area if spec.area is not None else (height, width, 0, 0)
    if spec.mask is not None:
        mask = spec.mask[:batch, y:y + h, x:x + w].to(device=like.device, dtype=like.dtype)
        if mask.shape[0] < batch:
            mask = mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1)[:batch]
        return mask.unsqueeze(1) * spec.strength
    if spec.area is None:
        return torch.full((1, 1, h, w), spec.strength, device=like.device, dtype=like.dtype)
    return _feathered(spec.area, height, width, spec.strength, like)


def coverage(specs: Sequence[CondSpec], like: Tensor) -> Tensor:
    """[B, 1, H, W]: the summed weight of ``specs`` over a chunk shaped like ``like`` ([B, C, H, W])."""
    batch, _, height, width = like.shape
    total = torch.zeros((batch, 1, height, width), device=like.device, dtype=like.dtype)
    for spec in specs:
        h, w, y, x = spec.area if spec.area is not None else (height, width, 0, 0)
        total[..., y:y + h, x:x + w] += entry_weight(spec, height, width, batch, like)
    return total


class ScheduledModel:
    """``model_fn(x, sigma, conds)`` that keeps each chunk's entries to those active at this sigma.

    As ComfyUI's calc_cond_batch: an entry is used only while the step's sigma lies in its range, and
    the denoised estimate is 0 wherever no entry weighs in (a chunk with no active entry is all 0).
    """

    def __init__(self, model_fn: Callable[..., Tensor], hooks: HookRunner | None = None) -> None:
        self.model_fn = model_fn
        self.hooks = hooks

    def __call__(self, x: Tensor, sigma: Tensor, conds: Sequence[Sequence[CondSpec]], **kwargs: Any) -> Tensor:
        now = float(sigma.reshape(-1)[0])
        active = [[spec for spec in specs if spec.active_at(now)] for specs in conds]
        if any(spec.default for specs in active for spec in specs):
            active = [_with_defaults(specs, chunk) for specs, chunk in zip(active, x.chunk(len(active)), strict=True)]
        if self.hooks is not None:
            self.hooks.step(now, {spec.hooks for specs in active for spec in specs if spec.hooks is not None})
        denoised = self.model_fn(x, sigma, active, **kwargs)
        chunks = denoised.chunk(len(active))
        if all(_fully_covered(specs) for specs in active):
            return denoised
        kept = [torch.where(coverage(specs, chunk) > 0, chunk, torch.zeros_like(chunk)) if specs else
                torch.zeros_like(chunk) for specs, chunk in zip(active, chunks, strict=True)]
        return torch.cat(kept)


def _with_defaults(specs: Sequence[CondSpec], like: Tensor) -> list[CondSpec]:
    """A side's entries with its default entries (ConditioningSetDefaultCombine) weighing ``1 - coverage`` of
    the others (at least 0), as ComfyUI's finalize_default_conds; left out where the others cover everything."""
    others = [spec for spec in specs if not spec.default]
    room = torch.relu(1 - coverage(others, like))
    if float(room.max()) == 0.0:
        return others
    fill = [replace(spec, area=None, mask=room[:, 0], strength=1.0) for spec in specs if spec.default]
    return [*others, *fill]


def _fully_covered(specs: Sequence[CondSpec]) -> bool:
    """True when some entry weighs in everywhere for sure (no area, no mask, positive strength)."""
    return any(s.area is None and s.mask is None and s.strength > 0 for s in specs)


def _row_guidance(spec: CondSpec, chunk: Tensor) -> Tensor:
    """Flux's distilled guidance for each row of an entry's chunk (FluxGuidance's, else Flux's default)."""
    value = FLUX_DEFAULT_GUIDANCE if spec.guidance is None else spec.guidance
    return torch.full((chunk.shape[0],), value, device=chunk.device, dtype=torch.float32)


def _repeat_tokens(context: Tensor, length: int) -> Tensor:
    return context.repeat(1, length // context.shape[1], 1) if context.shape[1] != length else context


class UNetApply:
    """``apply_model(x, timestep, conds)`` for a UNet, batching every entry that shares an area.

    ``patches`` (by patch point, see :mod:`engine.backend.unet`) go into every UNet call as a
    :class:`PatchContext` whose ``rows`` name each group's CondSpec; a call may add patches of its own
    with the keyword ``unet_patches`` (self-attention / perturbed-attention guidance re-run the model
    that way). The point ``torch_compile`` (entries: backend names) runs the UNet through
    ``torch.compile`` where it can (:func:`engine.backend.unet_patches.compiled_unet`).
    """

    def __init__(self, unet: UNetModel | FlowTransformerCall, control_fn: Callable[..., Any] | None = None,
                 concat: Tensor | None = None, patches: Mapping[str, Sequence[Any]] | None = None,
                 hooks: HookRunner | None = None) -> None:
        """``concat`` [B, k, H, W] is appended to the latent channels (inpainting models: mask + image);
        ``patches`` are the UNet patches of the MODEL (``GuidanceHooks.unet_patches``), by hook point. An SD3 or
        Flux transformer comes wrapped in a :class:`FlowTransformerCall`: it gets the patches as they are and
        (Flux) each row's distilled guidance."""
        self.unet = unet
        self.flow = isinstance(unet, FlowTransformerCall)
        self.control_fn = control_fn
        self.concat = concat
        self.hooks = hooks
        self.patches = {point: tuple(entries) for point, entries in (patches or {}).items()
                        if entries and point != "torch_compile"}
        self.run_unet: Callable[..., Tensor] = unet
        backends = tuple((patches or {}).get("torch_compile", ()))
        if backends and isinstance(unet, UNetModel):
            from engine.backend.unet_patches import compiled_unet
            self.run_unet = compiled_unet(unet, backends[-1])

    def __call__(self, x: Tensor, timestep: Tensor, conds: Sequence[Sequence[CondSpec]], *,
                 unet_patches: Mapping[str, Sequence[Any]] | None = None, **_: Any) -> Tensor:
        patches = self.patches
        if unet_patches:
            patches = {**patches}
            for point, entries in unet_patches.items():
                patches[point] = (*patches.get(point, ()), *entries)
        chunks, steps = x.chunk(len(conds)), timestep.chunk(len(conds))
        height, width = x.shape[-2:]
        out = [torch.zeros_like(c) for c in chunks]
        total = [torch.zeros_like(c[:, :1]) for c in chunks]
        groups: dict[Any, list[tuple[int, CondSpec]]] = {}
        for index, specs in enumerate(conds):
            for spec in specs:
                groups.setdefault((spec.hooks, spec.area), []).append((index, spec))
        if self.hooks is None and any(hooks is not None for hooks, _ in groups):
            raise ValueError("conditioning carries hooks (ConditioningSetProperties / SetClipHooks) but this sampling "
                             "run cannot patch the model per entry; sample with KSampler or SamplerCustom")
        for (hooks, area), members in sorted(groups.items(), key=lambda item: item[0][0] is not None):
            if self.hooks is not None:
                self.hooks.use(hooks)  # the entries without hooks first, then one patch per group of hooks
            preds = self._forward(chunks, steps, area, members, patches)
            h, w, y, x0 = area if area is not None else (height, width, 0, 0)
            for (index, spec), pred in zip(members, preds, strict=True):
                weight = entry_weight(spec, height, width, pred.shape[0], pred)
                out[index][..., y:y + h, x0:x0 + w] += pred * weight
                total[index][..., y:y + h, x0:x0 + w] += weight
        return torch.cat([o / t.clamp_min(1e-8) for o, t in zip(out, total, strict=True)])

    def _forward(self, chunks: Sequence[Tensor], steps: Sequence[Tensor], area: tuple[int, int, int, int] | None,
                 members: list[tuple[int, CondSpec]], patches: Mapping[str, Sequence[Any]]) -> list[Tensor]:
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
        row_groups = tuple((spec, chunk.shape[0]) for (_, spec), chunk in zip(members, xs, strict=True))
        grounding = gligen_patch(row_groups, x_in.shape, context) if any(s.gligen for _, s in members) else None
        if grounding is not None:  # GLIGEN boxes of some entries (engine.backend.gligen): their rows only
            patches = {**patches, "middle_patch": (*patches.get("middle_patch", ()), grounding)}
        if self.flow:
            guidance = torch.cat([_row_guidance(spec, chunk) for (_, spec), chunk in zip(members, xs, strict=True)])
            pred = self.run_unet(x_in, t_in, context, y=y, control=control, patches=patches, guidance=guidance)
        elif patches:  # the keyword only when there are patches: the plain call stays the plain call
            assert isinstance(self.unet, UNetModel)
            ctx = PatchContext(patches, t_in, tuple(x_in.shape), self.unet.config.model_channels, row_groups)
            pred = self.run_unet(x_in, t_in, context, y=y, control=control, patches=ctx)
        else:
            pred = self.run_unet(x_in, t_in, context, y=y, control=control)
        return list(pred.split([c.shape[0] for c in xs]))
