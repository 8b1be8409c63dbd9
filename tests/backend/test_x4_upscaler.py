"""The SD x4 upscaler against diffusers (an independent implementation of the same model) on tiny random
weights in fp32: the UNet with its noise-level class embedding and context-only first attention
(diffusers' ``num_class_embeds`` / ``only_cross_attention``), the low-res image's noise augmentation
(diffusers' ``DDPMScheduler.add_noise`` on the pipeline's low-res schedule), the model's noise levels,
and a whole KSampler run (Loom's sampling pipeline: concat, class labels, v-prediction, CFG) against
diffusers' upscale-pipeline loop over its EulerDiscreteScheduler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend import pipeline
from engine.backend.noise import prepare_noise
from engine.backend.unet import UNetConfig, UNetModel
from engine.backend.x4_upscaler import (
    LATENT_SCALE,
    LINEAR_END,
    LINEAR_START,
    augmentation_schedule,
    noise_level,
    x4_concat,
    x4_label,
    x4_source,
)
from engine.models.convert_diffusers import diffusers_unet_to_ldm
from engine.models.families import ModelFamily
from engine.sdk.ops import model_traits
from tests.backend.conftest import randomize_norms, relative_error

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4
CONTEXT_DIM = 24
X4_BETAS: dict[str, Any] = {"beta_start": LINEAR_START, "beta_end": LINEAR_END, "beta_schedule": "scaled_linear",
                            "num_train_timesteps": 1000}
#: The x4 upscaler's shape in miniature: no attention at level 0, context-only attn1 at level 1 (as the
#: real model's levels 0-2), plain self-attention at level 2 (its level 3), 7 input channels, class labels.
TINY_X4: dict[str, Any] = {
    "in_channels": 7,
    "out_channels": 4,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": (False, True, False),
    "layers_per_block": 1,
    "cross_attention_dim": CONTEXT_DIM,
    "attention_head_dim": 8,  # diffusers' name for the head count: 8 heads at every width, as the real model
    "use_linear_projection": True,
    "num_class_embeds": 1000,
    "norm_num_groups": 32,
}
X4_FAMILY = ModelFamily(name="sd2", prediction="v", in_channels=7)


@pytest.fixture(scope="module")
def networks() -> tuple[Any, UNetModel]:
    torch.manual_seed(0)
    reference = diffusers.UNet2DConditionModel(**TINY_X4).eval()
    randomize_norms(reference, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a class table far from zero, so a wrong label shows
        reference.class_embedding.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    weights = diffusers_unet_to_ldm(reference.state_dict())
    unet = UNetModel(UNetConfig.from_state_dict(weights)).eval()  # heads not visible in weights: inferred 8
    unet.load_state_dict(weights, strict=True)
    return reference, unet


def test_the_x4_layout_is_inferred_from_the_weights(networks: tuple[Any, UNetModel]) -> None:
    config = networks[1].config
    assert config.in_channels == 7 and config.num_classes == 1000 and config.adm_in_channels is None
    assert config.disable_self_attention == (False, True, False)
    assert (config.num_heads, config.num_head_channels) == (8, -1)  # x4-upscaling.yaml's num_heads: 8
    full = UNetConfig.from_state_dict(_x4_full_size_shapes())
    assert (full.num_heads, full.num_head_channels) == (8, -1)  # not 64-wide heads, though every width / 64
    assert full.disable_self_attention == (False, True, True, False)
    keys = networks[1].state_dict()
    assert keys["input_blocks.3.1.transformer_blocks.0.attn1.to_k.weight"].shape == (64, CONTEXT_DIM)
    assert keys["middle_block.1.transformer_blocks.0.attn1.to_k.weight"].shape == (64, 64)


def _x4_full_size_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the real x4 upscaler's UNet (diffusers' published config), built on the meta device."""
    config = {**TINY_X4, "block_out_channels": (256, 512, 512, 1024), "layers_per_block": 2,
              "down_block_types": ("DownBlock2D", *["CrossAttnDownBlock2D"] * 3),
              "up_block_types": (*["CrossAttnUpBlock2D"] * 3, "UpBlock2D"),
              "only_cross_attention": (True, True, True, False), "cross_attention_dim": 1024}
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel(**config)
    return {k: tuple(v.shape) for k, v in diffusers_unet_to_ldm(model.state_dict()).items()}


@torch.no_grad()
def test_unet_with_class_labels_and_context_first_attention_matches_diffusers(
        networks: tuple[Any, UNetModel]) -> None:
    reference, unet = networks
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 16, 16, generator=generator)
    context = torch.randn(3, 5, CONTEXT_DIM, generator=generator)
    t = torch.tensor([999.0, 250.0, 3.0])
    labels = torch.tensor([0, 20, 350])
    expected = reference(x, t, encoder_hidden_states=context, class_labels=labels).sample
    actual = unet(x, t, context, y=labels.float()[:, None])
    assert relative_error(actual, expected) < TOLERANCE
    other = unet(x, t, context, y=torch.tensor([[1.0], [21.0], [349.0]]))
    assert relative_error(other, expected) > 1e-3  # the label matters


def test_noise_augmentation_matches_diffusers_low_res_scheduler() -> None:
    """The pipeline's ``low_res_scheduler`` (DDPMScheduler, scaled_linear 1e-4..0.02) adds noise exactly as
    x4_concat does, with the noise ComfyUI draws (a CPU generator seeded seed - 10)."""
    low_res = diffusers.DDPMScheduler(**X4_BETAS)
    sqrt_acp, sqrt_one_minus = augmentation_schedule()
    torch.testing.assert_close(sqrt_acp**2, low_res.alphas_cumprod, rtol=1e-6, atol=0)
    image = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(4)) * 2 - 1
    latent = torch.zeros(2, 4, 12, 10)
    seed, augmentation = 77, 0.3
    level = noise_level(augmentation)
    assert level == 105
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed - 10))
    expected = low_res.add_noise(image, noise, torch.tensor([level]))
    actual = x4_concat(image, latent, augmentation, seed)
    assert actual.shape == (2, 3, 12, 10)
    torch.testing.assert_close(actual, expected.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-6)
    assert torch.equal(x4_concat(image, latent, 0.0, seed), image.expand(2, -1, -1, -1))  # no noise at 0
    assert torch.equal(x4_concat(None, latent, 0.3, seed), torch.zeros(2, 3, 12, 10))
    resized = x4_concat(image, torch.zeros(1, 4, 24, 20), 0.0, seed)  # resized to the latent
    assert resized.shape == (1, 3, 24, 20)
    assert float(x4_label({"noise_augmentation": augmentation})) == 105.0 and float(x4_label({})) == 0.0


def test_model_noise_levels_are_diffusers_x4_schedule() -> None:
    traits = model_traits(X4_FAMILY)
    assert traits.prediction == "v" and traits.x4_upscaler and traits.adm == "x4_upscaler"
    assert traits.latent_format.scale == LATENT_SCALE
    ours = pipeline.model_sampling_for(traits).sigmas.double()
    scheduler = diffusers.EulerDiscreteScheduler(**X4_BETAS, prediction_type="v_prediction")
    acp = scheduler.alphas_cumprod.double()
    # diffusers keeps betas in float32 (ours: float64): 8e-5 apart at the smallest sigma, 1e-6 elsewhere
    torch.testing.assert_close(ours, ((1 - acp) / acp) ** 0.5, rtol=2e-4, atol=0)
    sd = pipeline.model_sampling_for(model_traits(ModelFamily(name="sd2", prediction="v", in_channels=4)))
    assert float(sd.sigmas[-1]) < float(ours[-1]) * 0.5  # sigma_max 14.6 (SD) against 36.9 (x4)


@contextmanager
def _session(unet: UNetModel, shape: tuple[int, ...], cfg: bool) -> Iterator[UNetModel]:
    yield unet


def _no_controlnet(*_: Any) -> Any:
    raise AssertionError("no ControlNet in this run")


@torch.no_grad()
def test_ksampler_run_matches_diffusers_upscale_pipeline_loop(networks: tuple[Any, UNetModel]) -> None:
    """Loom's whole sampling path (SD_4XUpscale_Conditioning's extras on both prompts, euler, cfg 6) against
    the loop of diffusers' StableDiffusionUpscalePipeline with diffusers' own UNet: the noised low-res image
    concatenated after the scaled latent, the noise level as class label, v-prediction, CFG on the output.
    Shared: the initial noise, the augmentation noise and the sigma -> timestep map (ComfyUI semantics)."""
    reference_unet, unet = networks
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1
    cond, uncond = (torch.randn(1, 5, CONTEXT_DIM, generator=generator) for _ in range(2))
    seed, cfg, augmentation, steps = 42, 6.0, 0.2, 6
    extras = {"concat_image": image, "noise_augmentation": augmentation}
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    traits = model_traits(X4_FAMILY)
    request = pipeline.SamplingRequest(seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                                       positive=[[cond, extras]], negative=[[uncond, dict(extras)]], latent=latent)
    custom = pipeline.as_custom(request, traits)
    result = pipeline.sample_custom(custom, traits, lambda shape, cfg_pass: _session(unet, shape, cfg_pass),
                                    _no_controlnet, device=torch.device("cpu"), dtype=torch.float32,
                                    on_step=lambda *_: None)
    ms = pipeline.model_sampling_for(traits)

    scheduler = diffusers.EulerDiscreteScheduler(**X4_BETAS, prediction_type="v_prediction",
                                                 timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(sigmas=custom.sigmas.numpy())
    level = noise_level(augmentation)
    low_res_noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed - 10))
    low_res = diffusers.DDPMScheduler(**X4_BETAS).add_noise(image, low_res_noise, torch.tensor([level]))
    context = torch.cat([uncond, cond])
    latents = prepare_noise(latent["samples"], seed) * scheduler.init_noise_sigma
    for index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        model_input = torch.cat([model_input, low_res.expand(2, -1, -1, -1)], dim=1)
        timestep = ms.timestep(scheduler.sigmas[index]).float().expand(2)
        v = reference_unet(model_input, timestep, encoder_hidden_states=context,
                           class_labels=torch.tensor([level, level])).sample
        v_uncond, v_cond = v.chunk(2)
        latents = scheduler.step(v_uncond + cfg * (v_cond - v_uncond), t, latents).prev_sample
    # Loom's LATENT is the VAE's: the model latent / 0.08333.
    assert relative_error(result.latent["samples"] * LATENT_SCALE, latents) < TOLERANCE
    assert x4_source(request.positive)[1] == augmentation


def _sample(unet: UNetModel, augmentation: float, image: Tensor) -> Tensor:
    traits = model_traits(X4_FAMILY)
    context = torch.ones(1, 5, CONTEXT_DIM)
    extras = {"concat_image": image, "noise_augmentation": augmentation}
    request = pipeline.SamplingRequest(seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                                       positive=[[context, extras]], negative=[[context, extras]],
                                       latent={"samples": torch.zeros(1, 4, 8, 8)})
    return pipeline.sample(request, traits, lambda shape, cfg: _session(unet, shape, cfg), _no_controlnet,
                           device=torch.device("cpu"), dtype=torch.float32, on_step=lambda *_: None)["samples"]


def test_the_low_res_image_and_its_augmentation_steer_the_result(networks: tuple[Any, UNetModel]) -> None:
    unet = networks[1]
    generator = torch.Generator().manual_seed(6)
    image, other = (torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1 for _ in range(2))
    base = _sample(unet, 0.0, image)
    assert torch.equal(base, _sample(unet, 0.0, image))  # reproducible
    assert relative_error(_sample(unet, 0.0, other), base) > 1e-3
    assert relative_error(_sample(unet, 0.5, image), base) > 1e-3
