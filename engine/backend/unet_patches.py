"""MODEL patches that act inside the UNet: FreeU (v1, v2), Kohya's deep shrink, HyperTile, token
merging, attention weight multipliers and torch.compile.

Each patch is a frozen, picklable dataclass a MODEL handle carries (``ModelHandle.sampling_patches``);
``install(hooks, model_sampling)`` registers functions at the UNet's patch points (listed in
:mod:`engine.backend.unet`) for one sampling run, with any per-run state created there, so nothing
global is touched and a handle without the patch runs the plain UNet. The maths are ComfyUI's
(comfy_extras nodes_freelunch, nodes_model_downscale, nodes_hypertile, nodes_tomesd,
nodes_attention_multiply, nodes_torch_compile), read for facts and written here anew; the FreeU
paper is Si et al. 2024, "FreeU: Free Lunch in Diffusion U-Net".
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.backend.resample import resize
from engine.backend.token_merging import TokenFn, merge_functions
from engine.backend.unet import PatchContext

log = logging.getLogger(__name__)


class Hooks(Protocol):
    """What a patch needs of engine.backend.guidance.GuidanceHooks."""

    def add_unet_patch(self, point: str, patch: Any) -> None: ...


class Sampling(Protocol):
    """What a patch needs of a model sampling."""

    def percent_to_sigma(self, percent: float) -> float: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...


# ------------------------------------------------------------------------------------------- FreeU


def fourier_filter(x: Tensor, threshold: int, scale: float) -> Tensor:
    """Scale the ``2 * threshold`` lowest frequencies (centred square of the shifted 2-D spectrum) of
    ``x`` ``[B, C, H, W]`` by ``scale``; computed in float32, returned in ``x``'s dtype. Devices
    without FFT kernels compute it on the CPU."""
    try:
        return _fourier_filter(x, threshold, scale)
    except (RuntimeError, TypeError) as error:
        log.warning("FreeU: torch.fft does not run on %s (%s); filtering on the CPU", x.device, error)
        return _fourier_filter(x.cpu(), threshold, scale).to(x.device)


def _fourier_filter(x: Tensor, threshold: int, scale: float) -> Tensor:
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    mask = torch.ones(spectrum.shape[-2:], device=x.device)
    row, col = height // 2, width // 2
    mask[max(row - threshold, 0):row + threshold, max(col - threshold, 0):col + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def freeu_backbone_factor(h: Tensor, b: float, version: int) -> Tensor | float:
    """What FreeU multiplies the first half of the backbone channels by: ``b`` (v1), or (v2)
    ``(b - 1) * m + 1`` with ``m`` the channel mean of ``h`` min-max normalised per image."""
    if version == 1:
        return b
    mean = h.mean(1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(dim=-1).values[:, None, None, None]
    high = flat.max(dim=-1).values[:, None, None, None]
    return (b - 1) * ((mean - low) / (high - low)) + 1


@dataclass(frozen=True)
class FreeUPatch:
    """FreeU / FreeU_V2: at output blocks whose backbone ``h`` has 4x (b1, s1) or 2x (b2, s2) the
    model's base channels, the first half of ``h``'s channels is scaled (backbone) and the skip's
    lowest frequencies are scaled by ``s`` (Fourier filter, threshold 1)."""

    b1: float
    b2: float
    s1: float
    s2: float
    version: int = 1

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        hooks.add_unet_patch("output_block_patch", self.output_block_patch)

    def output_block_patch(self, h: Tensor, hsp: Tensor, ctx: PatchContext) -> tuple[Tensor, Tensor]:
        base = ctx.model_channels
        scales = {base * 4: (self.b1, self.s1), base * 2: (self.b2, self.s2)}
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, hsp
        half = h.shape[1] // 2
        factor = freeu_backbone_factor(h, scale[0], self.version)
        h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
        return h, fourier_filter(hsp, 1, scale[1])


# ------------------------------------------------------------------------------------------- deep shrink


def _call_timestep(ctx: PatchContext) -> float:
    return float(ctx.timestep.reshape(-1)[0])


@dataclass(frozen=True)
class DownscalePatch:
    """PatchModelAddDownscale (Kohya's deep shrink): while the step lies between ``start_percent`` and
    ``end_percent``, input block ``block_number``'s output is resized by ``1 / downscale_factor``
    (before or after it is kept as a skip); output blocks resize the backbone back to their skip's size.

    The percent window is compared on the discrete timestep grid the UNet is called with (the sigma
    bounds turned into timesteps by the model sampling), which is where ComfyUI's sigma test lands
    except for a sigma within half a grid step of a bound.
    """

    block_number: int
    downscale_factor: float
    start_percent: float
    end_percent: float
    downscale_after_skip: bool
    downscale_method: str
    upscale_method: str

    def install(self, hooks: Hooks, model_sampling: Sampling) -> None:
        window = tuple(float(model_sampling.timestep(torch.tensor(model_sampling.percent_to_sigma(p))))
                       for p in (self.start_percent, self.end_percent))
        point = "input_block_patch_after_skip" if self.downscale_after_skip else "input_block_patch"
        hooks.add_unet_patch(point, _Downscale(self, window[0], window[1]))
        hooks.add_unet_patch("output_block_patch", self.output_block_patch)

    def output_block_patch(self, h: Tensor, hsp: Tensor, ctx: PatchContext) -> tuple[Tensor, Tensor]:
        if h.shape[2] != hsp.shape[2]:
            h = resize(h, hsp.shape[-1], hsp.shape[-2], self.upscale_method)
        return h, hsp


@dataclass(frozen=True)
class _Downscale:
    patch: DownscalePatch
    timestep_start: float
    timestep_end: float

    def __call__(self, h: Tensor, ctx: PatchContext) -> Tensor:
        if ctx.block[1] != self.patch.block_number:
            return h
        if not self.timestep_end <= _call_timestep(ctx) <= self.timestep_start:
            return h
        factor = 1.0 / self.patch.downscale_factor
        return resize(h, round(h.shape[-1] * factor), round(h.shape[-2] * factor), self.patch.downscale_method)


# ------------------------------------------------------------------------------------------- HyperTile


def _closest_divisors(hw: int, aspect_ratio: float) -> tuple[int, int]:
    pairs = [(d, hw // d) for d in range(2, hw + 1) if hw % d == 0]
    return min(pairs, key=lambda pair: abs(pair[1] / pair[0] - aspect_ratio))


@cache
def tile_grid(hw: int, aspect_ratio: float) -> tuple[int, int]:
    """(h, w) with ``h * w == hw`` near ``sqrt(hw * aspect)`` x ``sqrt(hw / aspect)`` (ComfyUI's
    HyperTile candidate search, its orientation included: ``aspect_ratio`` is width / height)."""
    h, w = round(math.sqrt(hw * aspect_ratio)), round(math.sqrt(hw / aspect_ratio))
    if h * w == hw:
        return h, w
    if hw % h == 0:
        return h, hw // h
    if hw % w == 0:
        return hw // w, w
    return _closest_divisors(hw, aspect_ratio)


def random_divisor(value: int, min_value: int, max_options: int, counter: int) -> int:
    """``value // d`` for one of the ``max_options`` smallest divisors ``d >= min_value`` of ``value``,
    chosen by a generator seeded with ``counter`` (Python's ``random``, as ComfyUI)."""
    min_value = min(min_value, value)
    divisors = [d for d in range(min_value, value + 1) if value % d == 0]
    options = [value // d for d in divisors[:max_options]]
    return options[random.Random(counter).randint(0, len(options) - 1)]


def tile_tokens(x: Tensor, nh: int, nw: int, h: int, w: int) -> Tensor:
    """``[B, h * w, C]`` (row-major) -> ``[B * nh * nw, (h // nh) * (w // nw), C]``, one tile a batch row."""
    b, _, c = x.shape
    x = x.view(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, (h // nh) * (w // nw), c)


def untile_tokens(x: Tensor, nh: int, nw: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`tile_tokens`."""
    c = x.shape[-1]
    x = x.view(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h * w, c)


@dataclass(frozen=True)
class HyperTilePatch:
    """HyperTile: self-attention queries at the first ``max_depth + 1`` widths attend within tiles of
    about ``tile_size`` pixels (``swap_size`` candidate tile counts per side, picked pseudo-randomly).

    ComfyUI seeds each pick with a counter that lives on its node object across runs; here the
    counter restarts at 1 for every sampling run, so a run is reproducible on its own.
    """

    tile_size: int
    swap_size: int
    max_depth: int
    scale_depth: bool

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        state = _HyperTileState(self)
        hooks.add_unet_patch("attn1_patch", state.tile)
        hooks.add_unet_patch("attn1_output_patch", state.untile)


@dataclass
class _HyperTileState:
    patch: HyperTilePatch
    counter: int = 1
    pending: tuple[int, int, int, int] | None = None

    def tile(self, q: Tensor, k: Tensor, v: Tensor, ctx: PatchContext) -> tuple[Tensor, Tensor, Tensor]:
        base, p = ctx.model_channels, self.patch
        if q.shape[-1] not in {base * 2 ** depth for depth in range(p.max_depth + 1)}:
            return q, k, v
        shape = ctx.original_shape
        h, w = tile_grid(q.shape[1], shape[-1] / shape[-2])
        factor = 2 ** ((q.shape[-1] // base) - 1) if p.scale_depth else 1
        latent_tile = max(32, p.tile_size) // 8 * factor
        nh = random_divisor(h, latent_tile, p.swap_size, self.counter)
        nw = random_divisor(w, latent_tile, p.swap_size, self.counter + 1)
        self.counter += 2
        if nh * nw > 1:
            q = tile_tokens(q, nh, nw, h, w)
            self.pending = (nh, nw, h, w)
        return q, k, v

    def untile(self, out: Tensor, ctx: PatchContext) -> Tensor:
        if self.pending is None:
            return out
        nh, nw, h, w = self.pending
        self.pending = None
        return untile_tokens(out, nh, nw, h, w)


# ------------------------------------------------------------------------------------------- ToMe


@dataclass(frozen=True)
class TomePatch:
    """TomePatchModel: merge ``ratio`` of the full-resolution self-attention queries (token merging),
    unmerge after the attention. ComfyUI draws the destination tokens from torch's global generator;
    here from a generator seeded 0 at the start of each sampling run (reproducible runs)."""

    ratio: float

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        if self.ratio <= 0:
            return
        state = _TomeState(self.ratio, torch.Generator().manual_seed(0))
        hooks.add_unet_patch("attn1_patch", state.merge)
        hooks.add_unet_patch("attn1_output_patch", state.unmerge_tokens)


@dataclass
class _TomeState:
    ratio: float
    generator: torch.Generator
    unmerge: TokenFn | None = field(default=None)

    def merge(self, q: Tensor, k: Tensor, v: Tensor, ctx: PatchContext) -> tuple[Tensor, Tensor, Tensor]:
        merge, self.unmerge = merge_functions(q, self.ratio, ctx.original_shape, self.generator)
        return merge(q), k, v

    def unmerge_tokens(self, out: Tensor, ctx: PatchContext) -> Tensor:
        return out if self.unmerge is None else self.unmerge(out)


# ------------------------------------------------------------------------------------------- multipliers


@dataclass(frozen=True)
class AttentionMultiplyPatch:
    """UNetSelfAttentionMultiply ("attn1") / UNetCrossAttentionMultiply ("attn2"): the to_q, to_k, to_v
    and to_out.0 weights and biases multiplied by q, k, v, out where they are used (stored weights
    unchanged), as ComfyUI's weight patches with strength_model = the multiplier."""

    attention: str
    q: float
    k: float
    v: float
    out: float

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        scales = (self.q, self.k, self.v, self.out)
        if scales != (1.0, 1.0, 1.0, 1.0):
            hooks.add_unet_patch(f"{self.attention}_multiply", scales)


# ------------------------------------------------------------------------------------------- torch.compile


@dataclass(frozen=True)
class TorchCompilePatch:
    """TorchCompileModel: run the UNet through ``torch.compile(backend=...)`` where it can run
    (a CUDA device, and triton for inductor); elsewhere a log line and the plain UNet."""

    backend: str = "inductor"

    def install(self, hooks: Hooks, model_sampling: Any) -> None:
        hooks.add_unet_patch("torch_compile", self.backend)


def compile_unavailable(device: torch.device, backend: str) -> str | None:
    """Why torch.compile cannot run the UNet on ``device`` with ``backend`` (None: it can)."""
    if device.type != "cuda":
        return f"torch.compile is used on CUDA devices only and the UNet is on {device.type}"
    if backend == "inductor" and importlib.util.find_spec("triton") is None:
        return "the inductor backend needs triton, which is not installed"
    return None


class _CompiledOrPlain:
    """The compiled UNet; if compiling fails at the first call, the plain one from then on."""

    def __init__(self, compiled: Any, plain: nn.Module) -> None:
        self.compiled: Any = compiled
        self.plain = plain

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                log.warning("TorchCompileModel: torch.compile failed (%s); the UNet runs uncompiled", error)
                self.compiled = None
        return self.plain(*args, **kwargs)


def compiled_unet(unet: nn.Module, backend: str) -> Any:
    """``unet`` compiled with ``backend`` where torch.compile can run, else ``unet`` itself (logged)."""
    device = next(unet.parameters()).device
    reason = compile_unavailable(device, backend)
    if reason is not None:
        log.info("TorchCompileModel: %s; the UNet runs uncompiled (same output)", reason)
        return unet
    return _CompiledOrPlain(torch.compile(unet, backend=backend), unet)
