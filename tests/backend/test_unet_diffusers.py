"""Numerical equivalence with diffusers' UNet2DConditionModel (an independent implementation) on tiny
random models in fp32: the diffusers weights are renamed to the LDM layout, loaded with strict=True,
and both models run on the same inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.backend.unet import UNetConfig, UNetModel, sdxl_adm, sdxl_refiner_adm, timestep_embedding
from engine.models.convert_diffusers import diffusers_unet_to_ldm
from tests.backend.conftest import randomize_norms, relative_error

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4

SD1_LIKE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,  # diffusers' name for the head count here: 8 heads
    "norm_num_groups": 32,
}
SD1_CONFIG = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=(2, 2),
    transformer_depth=(1, 1, 0, 0),
    transformer_depth_middle=1,
    transformer_depth_output=(0, 0, 0, 1, 1, 1),
    context_dim=32,
    num_heads=8,
)

LINEAR_DEEP: dict[str, Any] = {
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2, 1),
    "cross_attention_dim": 24,
    "attention_head_dim": (2, 4, 4),  # 16-wide heads
    "use_linear_projection": True,
    "norm_num_groups": 32,
}

POOLED = 32
SDXL_LIKE: dict[str, Any] = {
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 1, 2),
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,  # SGM's 256-dim embedding per size scalar
    "projection_class_embeddings_input_dim": POOLED + 6 * 256,
    "norm_num_groups": 32,
}


def _pair(kwargs: dict[str, Any], heads: dict[str, int]) -> tuple[Any, UNetModel]:
    """A seeded tiny diffusers UNet and Loom's UNet loaded (strict) with its renamed weights."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    reference = diffusers.UNet2DConditionModel(**kwargs).eval()
    randomize_norms(reference, generator)
    weights = diffusers_unet_to_ldm(reference.state_dict())
    inferred = UNetConfig.from_state_dict(weights)
    config = UNetConfig(**{**inferred.__dict__, **heads})
    model = UNetModel(config).eval()
    model.load_state_dict(weights, strict=True)
    return reference, model


def _inputs(batch: int, height: int, width: int, context_dim: int, tokens: int = 7) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, height, width, generator=generator)
    context = torch.randn(batch, tokens, context_dim, generator=generator)
    timesteps = torch.tensor([999.0, 17.5, 0.0, 500.0][:batch])
    return x, timesteps, context


@torch.no_grad()
def test_sd1_like_unet_with_conv_projections_matches_diffusers() -> None:
    reference, model = _pair(SD1_LIKE, {"num_heads": 8, "num_head_channels": -1})
    assert model.config == SD1_CONFIG
    x, t, context = _inputs(2, 16, 16, 32)
    expected = reference(x, t, encoder_hidden_states=context).sample
    assert relative_error(model(x, t, context), expected) < TOLERANCE


@torch.no_grad()
def test_odd_latent_sizes_upsample_to_the_skip_size_like_diffusers() -> None:
    reference, model = _pair(SD1_LIKE, {"num_heads": 8, "num_head_channels": -1})
    x, t, context = _inputs(1, 9, 13, 32)
    expected = reference(x, t, encoder_hidden_states=context).sample
    actual = model(x, t, context)
    assert actual.shape == x.shape
    assert relative_error(actual, expected) < TOLERANCE


@torch.no_grad()
def test_linear_projection_unet_with_deeper_transformers_matches_diffusers() -> None:
    reference, model = _pair(LINEAR_DEEP, {"num_heads": -1, "num_head_channels": 16})
    assert model.config.use_linear_in_transformer
    assert model.config.transformer_depth == (1, 2, 0)
    x, t, context = _inputs(3, 16, 16, 24)
    expected = reference(x, t, encoder_hidden_states=context).sample
    assert relative_error(model(x, t, context), expected) < TOLERANCE


@torch.no_grad()
def test_sdxl_like_unet_and_adm_vector_match_diffusers_text_time() -> None:
    reference, model = _pair(SDXL_LIKE, {"num_heads": -1, "num_head_channels": 16})
    assert model.config.adm_in_channels == POOLED + 6 * 256
    x, t, context = _inputs(2, 16, 16, 32)
    pooled = torch.randn(2, POOLED, generator=torch.Generator().manual_seed(2))
    # diffusers' time_ids are (orig h, orig w, crop top, crop left, target h, target w).
    time_ids = torch.tensor([[1024.0, 768.0, 32.0, 16.0, 1024.0, 832.0]] * 2)
    expected = reference(
        x, t, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
    ).sample
    y = sdxl_adm(pooled, width=768, height=1024, crop_w=16, crop_h=32, target_width=832, target_height=1024)
    assert relative_error(model(x, t, context, y=y), expected) < TOLERANCE


@torch.no_grad()
def test_control_residuals_are_added_where_diffusers_adds_controlnet_residuals() -> None:
    reference, model = _pair(SD1_LIKE, {"num_heads": 8, "num_head_channels": -1})
    x, t, context = _inputs(2, 16, 16, 32)
    generator = torch.Generator().manual_seed(3)
    # One residual per input block (in input order, as a ControlNet emits them) and one for the middle.
    shapes = [(32, 16, 16)] * 3 + [(32, 8, 8), (64, 8, 8), (64, 8, 8)]
    outputs = [0.5 * torch.randn(2, *shape, generator=generator) for shape in shapes]
    middle = 0.5 * torch.randn(2, 64, 8, 8, generator=generator)
    expected = reference(
        x,
        t,
        encoder_hidden_states=context,
        down_block_additional_residuals=tuple(outputs),
        mid_block_additional_residual=middle,
    ).sample
    actual = model(x, t, context, control={"output": outputs, "middle": [middle]})
    assert relative_error(actual, expected) < TOLERANCE


def test_timestep_embedding_is_cos_then_sin() -> None:
    t = torch.tensor([0.0, 10.0])
    embedding = timestep_embedding(t, 8)
    assert embedding.dtype == torch.float32
    torch.testing.assert_close(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    frequencies = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(embedding[1, :4], torch.cos(10 * frequencies))
    torch.testing.assert_close(embedding[1, 4:], torch.sin(10 * frequencies))


def test_adm_vectors_have_the_checkpoint_widths() -> None:
    pooled = torch.randn(3, 1280)
    assert sdxl_adm(pooled, 1024, 1024).shape == (3, 2816)
    assert sdxl_refiner_adm(pooled, 1024, 1024, aesthetic_score=6.0).shape == (3, 2560)
    # Target size defaults to the original size; the pooled embedding comes first, unchanged.
    explicit = sdxl_adm(pooled, 896, 1152, target_width=896, target_height=1152)
    torch.testing.assert_close(sdxl_adm(pooled, 896, 1152), explicit)
    torch.testing.assert_close(explicit[:, :1280], pooled)
    # Refiner: (h, w, crop top, crop left, score), each a 256-dim embedding.
    refiner = sdxl_refiner_adm(pooled, width=640, height=512, aesthetic_score=2.5, crop_w=8, crop_h=4)
    scalars = torch.tensor([512.0, 640.0, 4.0, 8.0, 2.5])
    torch.testing.assert_close(refiner[0, 1280:], timestep_embedding(scalars, 256).flatten())


def test_timestep_embedding_is_bit_identical_to_diffusers() -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([999.0, 500.5, 1.0, 0.0])
    expected = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(timestep_embedding(t, 320), expected)
