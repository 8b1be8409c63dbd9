"""SD3 and Flux ControlNets through Loom's sampling pipeline (``pipeline.sample``), against a hand-written
rectified-flow Euler loop over diffusers' transformers fed diffusers' ControlNet residuals
(``block_controlnet_hidden_states`` / ``controlnet_block_samples``): the hint encoded by the spec's VAE and put in
the net's latent format, the strength, the timesteps and pooled vectors each net gets, CFG rows with and without a
ControlNet, the start/end window and chaining; strength 0 equal to no ControlNet; and nets of another family
refused before the first step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.control_apply import ControlSpec, control_function
from engine.backend.control_attach import attach_control
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.flow_control import FlowControlApplier, flow_control_function
from engine.backend.flux import image_ids, patchify, unpatchify
from engine.backend.latent_formats import FLUX, SD3, LatentFormat
from engine.backend.model_sampling import DiscreteFlowSampling, FluxSampling, ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.pipeline import SamplingRequest, sample
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetConfig
from engine.models.families import ModelFamily
from engine.models.handles import ControlNetHandle, FileRef
from engine.models.manager import ModelManager
from engine.sdk.ops import model_traits
from tests.backend.flow_controlnet_files import (
    flux_controlnet,
    flux_transformer,
    loom_flux,
    loom_mmdit,
    sd3_controlnet,
    sd3_transformer,
    write_diffusers,
)

STEPS, CFG, SEED = 2, 2.5, 11
SIZE = 8  # latent side: 64 x 64 pixels
SD3_FAMILY = ModelFamily("sd3", "flow", 16, 16, variant="sd3")
FLUX_FAMILY = ModelFamily("flux", "flow", 16, 16, variant="dev")
#: SD3 ControlNets read the hint latent scaled by SD3's factor without its shift (ComfyUI's reading of them).
SD3_SCALE = 1.5305


def fake_vae(pixels: Tensor) -> Tensor:
    """A deterministic stand-in for a 16-channel VAE encoder: 8x8 means of the pixels, spread over 16 channels."""
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled * (1 + 0.1 * c) - 0.3 for c in range(6)], dim=1)[:, :16]


def _conds(context_width: int, pooled: int, seed: int) -> list[list[Any]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 6, context_width, generator=generator),
             {"pooled_output": torch.randn(1, pooled, generator=generator)}]]


def _image() -> Tensor:
    return torch.rand(1, SIZE * 8, SIZE * 8, 3, generator=torch.Generator().manual_seed(3))


def _run(model: nn.Module, family: ModelFamily, positive: list[Any], negative: list[Any],
         manager: ModelManager) -> Tensor:
    traits = model_traits(family)
    request = SamplingRequest(seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
                              positive=positive, negative=negative, latent={"samples": torch.zeros(1, 16, SIZE, SIZE)})
    result = sample(request, traits, lambda shape, cfg: contextlib.nullcontext(model), manager.controlnet,
                    device=torch.device("cpu"), dtype=torch.float32, on_step=lambda *_: None)
    return result["samples"]


def _euler(velocity: Callable[[Tensor, Tensor, int], Tensor], ms: ModelSampling, latent_format: LatentFormat) -> Tensor:
    """A plain CFG Euler loop: ``velocity(x, sigma, 0 cond / 1 uncond)``."""
    sigmas = sigmas_for(ms, "simple", "euler", STEPS)
    noise = prepare_noise(torch.zeros(1, 16, SIZE, SIZE), SEED)
    x = sigmas[0] * noise + (1 - sigmas[0]) * latent_format.to_model(torch.zeros(1, 16, SIZE, SIZE))
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        cond = x - sigma * velocity(x, sigma, 0)
        uncond = x - sigma * velocity(x, sigma, 1)
        denoised = uncond + CFG * (cond - uncond)
        x = x + (x - denoised) / sigma * (following - sigma)
    return latent_format.to_vae(x)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(diffusers transformer of 4 joint blocks, diffusers ControlNet of 2, the ControlNet's file)."""
    net = sd3_controlnet(seed=21, layers=2)
    path = write_diffusers(net, tmp_path_factory.mktemp("cn") / "sd3.safetensors")
    return sd3_transformer(seed=20, layers=4), net, path


@torch.no_grad()
def test_sd3_controlnet_samples_like_diffusers_with_its_residuals(sd3: tuple[Any, Any, Path]) -> None:
    transformer, net, path = sd3
    handle = ControlNetHandle(FileRef.of(path))
    positive, negative = _conds(32, 48, 1), _conds(32, 48, 2)
    shared: dict[int, ControlSpec] = {}
    positive = attach_control(positive, handle, _image(), 0.7, 0.0, 1.0, False, shared, vae=fake_vae)
    negative = attach_control(negative, handle, _image(), 0.7, 0.0, 1.0, False, shared, vae=fake_vae)
    out = _run(loom_mmdit(transformer), SD3_FAMILY, positive, negative, ModelManager("cpu"))

    hint = SD3_SCALE * fake_vae(_image().movedim(-1, 1))

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        context, extras = (positive, negative)[which][0]
        t = (sigma * 1000).reshape(1)
        residuals = net(hidden_states=x, controlnet_cond=hint, conditioning_scale=0.7, encoder_hidden_states=context,
                        pooled_projections=torch.zeros(1, 48), timestep=t).controlnet_block_samples
        return transformer(hidden_states=x, encoder_hidden_states=context, pooled_projections=extras["pooled_output"],
                           timestep=t, block_controlnet_hidden_states=residuals).sample

    expected = _euler(velocity, DiscreteFlowSampling(3.0, 1000.0), SD3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    plain = _run(loom_mmdit(transformer), SD3_FAMILY, _conds(32, 48, 1), _conds(32, 48, 2), ModelManager("cpu"))
    assert (out - plain).abs().max() > 1e-2  # the ControlNet changed the image


@torch.no_grad()
def test_strength_zero_equals_no_controlnet(sd3: tuple[Any, Any, Path]) -> None:
    transformer, _, path = sd3
    handle = ControlNetHandle(FileRef.of(path))
    positive = attach_control(_conds(32, 48, 1), handle, _image(), 0.0, 0.0, 1.0, False, {}, vae=fake_vae)
    off = _run(loom_mmdit(transformer), SD3_FAMILY, positive, _conds(32, 48, 2), ModelManager("cpu"))
    plain = _run(loom_mmdit(transformer), SD3_FAMILY, _conds(32, 48, 1), _conds(32, 48, 2), ModelManager("cpu"))
    torch.testing.assert_close(off, plain, rtol=0, atol=0)


@torch.no_grad()
def test_flux_controlnet_on_the_positive_rows_samples_like_diffusers(tmp_path: Path) -> None:
    """InstantX union net (mode 1) on the positive prompt only: the uncond rows run without residuals."""
    transformer, net = flux_transformer(seed=30, layers=3, singles=4), flux_controlnet(seed=31, num_mode=4)
    handle = ControlNetHandle(FileRef.of(write_diffusers(net, tmp_path / "flux-union.safetensors")), union_type=1)
    positive = attach_control(_conds(32, 24, 3), handle, _image(), 0.8, 0.0, 1.0, False, {}, vae=fake_vae)
    positive[0][1]["guidance"] = 2.0
    negative = _conds(32, 24, 4)
    out = _run(loom_flux(transformer), FLUX_FAMILY, positive, negative, ModelManager("cpu"))

    hint = patchify(FLUX.to_model(fake_vae(_image().movedim(-1, 1))))
    rows = SIZE // 2
    ids = {"img_ids": image_ids(1, rows, rows)[0], "txt_ids": torch.zeros(6, 3)}

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        context, extras = (positive, negative)[which][0]
        common = {"encoder_hidden_states": context, "pooled_projections": extras["pooled_output"],
                  "timestep": sigma.reshape(1), "guidance": torch.tensor([2.0 if which == 0 else 3.5]), **ids}
        control: dict[str, Any] = {}
        if which == 0:
            residuals = net(hidden_states=patchify(x), controlnet_cond=hint, controlnet_mode=torch.tensor([[1]]),
                            conditioning_scale=0.8, **common)
            control = {"controlnet_block_samples": residuals.controlnet_block_samples,
                       "controlnet_single_block_samples": residuals.controlnet_single_block_samples}
        packed = transformer(hidden_states=patchify(x), **common, **control).sample
        return unpatchify(packed, rows, rows)

    expected = _euler(velocity, FluxSampling(1.15), FLUX)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def _applier(last: ControlSpec) -> tuple[FlowControlApplier, ModelSampling]:
    ms = DiscreteFlowSampling(3.0, 1000.0)
    conds = [[_Cond(last)]]
    applier = flow_control_function(conds, ms, ModelManager("cpu").controlnet, loom_mmdit(sd3_transformer(40, 4)))
    assert applier is not None
    return applier, ms


@dataclass(frozen=True)
class _Cond:
    """What the control function reads of a prepared conditioning entry."""

    control: ControlSpec
    guidance: float | None = None


@torch.no_grad()
def test_window_and_chain_add_strength_scaled_residuals(tmp_path: Path) -> None:
    nets = [sd3_controlnet(seed=41 + i) for i in range(2)]
    handles = [ControlNetHandle(FileRef.of(write_diffusers(net, tmp_path / f"cn{i}.safetensors")))
               for i, net in enumerate(nets)]
    first = ControlSpec(handles[0], _image().movedim(-1, 1), 0.5, 0.0, 0.5, vae=fake_vae)
    second = ControlSpec(handles[1], _image().movedim(-1, 1), 2.0, 0.0, 1.0, first, vae=fake_vae)
    applier, ms = _applier(second)
    generator = torch.Generator().manual_seed(9)
    x, context = torch.randn(1, 16, SIZE, SIZE, generator=generator), torch.randn(1, 6, 32, generator=generator)
    hint = SD3_SCALE * fake_vae(_image().movedim(-1, 1))
    cond = _Cond(second)

    def residuals(net: Any, t: Tensor, scale: float) -> list[Tensor]:
        return list(net(hidden_states=x, controlnet_cond=hint, conditioning_scale=scale, encoder_hidden_states=context,
                        pooled_projections=torch.zeros(1, 48), timestep=t).controlnet_block_samples)

    early = ms.timestep(torch.tensor(ms.percent_to_sigma(0.2))).reshape(1).float()  # both nets act
    out = applier(x, early, context, None, [cond])
    assert out is not None
    one, two = residuals(nets[0], early, 0.5), residuals(nets[1], early, 2.0)
    for block, index in enumerate((0, 0, 1)):  # 4 joint blocks, 2 ControlNet blocks: 2, then 1
        torch.testing.assert_close(out["double"][block], one[index] + two[index], rtol=0, atol=1e-4)
    late = ms.timestep(torch.tensor(ms.percent_to_sigma(0.8))).reshape(1).float()  # past the first net's end_percent
    out = applier(x, late, context, None, [cond])
    assert out is not None
    two = residuals(nets[1], late, 2.0)
    for block, index in enumerate((0, 0, 1)):
        torch.testing.assert_close(out["double"][block], two[index], rtol=0, atol=1e-4)


def test_other_families_and_missing_vaes_are_refused_before_sampling(sd3: tuple[Any, Any, Path],
                                                                     tmp_path: Path) -> None:
    transformer, _, path = sd3
    flux = loom_flux(flux_transformer(seed=50, layers=1, singles=1))
    with torch.device("meta"):
        sd1 = ControlNet(ControlNetConfig(UNetConfig()))
    positive = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 24),
                                         "control": ControlSpec(sd1, _image().movedim(-1, 1))}]]
    with pytest.raises(ValueError, match=r"\(a SD1.x ControlNet.*does not fit this Flux model: it is not a Flux "
                                         "ControlNet; use a ControlNet made for Flux models"):
        _run(flux, FLUX_FAMILY, positive, _conds(32, 24, 1), ModelManager("cpu"))
    sd3_spec = ControlSpec(ControlNetHandle(FileRef.of(path)), _image().movedim(-1, 1), vae=fake_vae)
    positive = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 24), "control": sd3_spec}]]
    with pytest.raises(ValueError, match=r"'sd3.safetensors' \(an SD3 ControlNet .*it is not a Flux ControlNet"):
        _run(flux, FLUX_FAMILY, positive, _conds(32, 24, 1), ModelManager("cpu"))
    union = ControlNetHandle(FileRef.of(write_diffusers(flux_controlnet(seed=51, layers=1, singles=1, num_mode=4),
                                                        tmp_path / "union.safetensors")), union_type=6)
    positive = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 24),
                                         "control": ControlSpec(union, _image().movedim(-1, 1), vae=fake_vae)}]]
    with pytest.raises(ValueError, match="knows 4 union modes; SetUnionControlNetType's type index 6"):
        _run(flux, FLUX_FAMILY, positive, _conds(32, 24, 1), ModelManager("cpu"))
    no_vae = ControlSpec(ControlNetHandle(FileRef.of(path)), _image().movedim(-1, 1))
    positive = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 48), "control": no_vae}]]
    with pytest.raises(ValueError, match="takes the hint image as a VAE latent: connect the model's VAE"):
        _run(loom_mmdit(transformer), SD3_FAMILY, positive, _conds(32, 48, 1), ModelManager("cpu"))
    with pytest.raises(ValueError, match="made for SD3/Flux transformer models"):  # and on a UNet
        control_function([[_Cond(sd3_spec)]], DiscreteFlowSampling(3.0, 1000.0),
                         ModelManager("cpu").controlnet, UNetConfig())
