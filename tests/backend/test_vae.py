"""AutoencoderKL: checkpoint layout, config inference, equivalence with diffusers, tiled encode/decode."""

from __future__ import annotations

import math

import pytest
import torch

from engine.backend.vae import (
    SD1_SCALE_FACTOR,
    SDXL_SCALE_FACTOR,
    AutoencoderKL,
    VAEConfig,
    adapt_vae_weight,
    decode_tiled,
    encode_tiled,
    load_weights,
)
from tests.backend.conftest import diffusers_vae_to_ldm, randomize_norms, read_reference_shapes, relative_error

TINY = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
TOLERANCE = 1e-4


def test_sd_names_and_shapes_equal_the_real_checkpoint() -> None:
    reference = read_reference_shapes("first_stage_model.")
    assert len(reference) == 248
    assert VAEConfig.SD15.expected_shapes() == reference


def test_config_is_inferred_from_the_real_listing_and_round_trips() -> None:
    reference = read_reference_shapes("first_stage_model.")
    prefixed = {f"first_stage_model.{k}": v for k, v in reference.items()}
    prefixed["model.diffusion_model.out.2.weight"] = (4, 320, 3, 3)
    assert VAEConfig.from_state_dict(prefixed, prefix="first_stage_model.") == VAEConfig.SDXL
    assert VAEConfig.SD15.downscale == 8
    for config in (TINY, VAEConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=3, z_channels=8, embed_dim=6)):
        assert VAEConfig.from_state_dict(config.expected_shapes()) == config
    assert math.isclose(SD1_SCALE_FACTOR, 0.18215) and math.isclose(SDXL_SCALE_FACTOR, 0.13025)


def test_unsupported_or_missing_vae_is_reported() -> None:
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        VAEConfig.from_state_dict({"x": (1,)}, prefix="first_stage_model.")
    with pytest.raises(ValueError, match="multiples of 32"):
        VAEConfig(ch=48)


def _diffusers_pair(conv_attention: bool) -> tuple[object, AutoencoderKL, dict[str, torch.Tensor]]:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
    ).eval()
    randomize_norms(reference, torch.Generator().manual_seed(1))
    weights = diffusers_vae_to_ldm(reference.state_dict(), levels=2, conv_attention=conv_attention)
    assert VAEConfig.from_state_dict(weights) == TINY
    model = AutoencoderKL(TINY).eval()
    model.load_state_dict(weights, strict=True)
    return reference, model, weights


@torch.no_grad()
@pytest.mark.parametrize("conv_attention", [True, False], ids=["conv-1x1-attention", "2d-attention"])
def test_encode_and_decode_match_diffusers(conv_attention: bool) -> None:
    reference, model, _ = _diffusers_pair(conv_attention)
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 24, 32, generator=generator) * 2 - 1
    expected_mean = reference.encode(images).latent_dist.mean
    assert relative_error(model.encode(images), expected_mean) < TOLERANCE
    latents = torch.randn(2, 4, 12, 10, generator=generator)
    assert relative_error(model.decode(latents), reference.decode(latents).sample) < TOLERANCE


@torch.no_grad()
def test_load_weights_accepts_2d_attention_weights_into_a_meta_model() -> None:
    reference, model, _ = _diffusers_pair(True)
    flat = diffusers_vae_to_ldm(reference.state_dict(), levels=2, conv_attention=False)
    assert flat["encoder.mid.attn_1.q.weight"].ndim == 2
    with torch.device("meta"):
        meta = AutoencoderKL(TINY)
    load_weights(meta, flat.items(), adapt=adapt_vae_weight)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(meta.eval().decode(latents), model.decode(latents), rtol=0, atol=0)


def test_from_state_dict_adopts_the_tensors() -> None:
    weights = {f"first_stage_model.{k}": v for k, v in AutoencoderKL(TINY).state_dict().items()}
    vae = AutoencoderKL.from_state_dict(weights, prefix="first_stage_model.")
    assert vae.config == TINY
    assert vae.quant_conv.weight.data_ptr() == weights["first_stage_model.quant_conv.weight"].data_ptr()
    assert not list(vae.buffers())


@torch.no_grad()
def test_encode_samples_with_a_generator_and_returns_the_mean_without() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY).eval()
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    mean = vae.encode(images)
    first = vae.encode(images, generator=torch.Generator().manual_seed(5))
    again = vae.encode(images, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - mean).abs().max() > 1e-3
    assert mean.shape == (1, 4, 8, 8)


@torch.no_grad()
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_half_precision_follows_the_parameters(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY).eval()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = vae.decode(latents)
    images = vae.to(dtype).decode(latents)
    assert images.dtype == dtype
    assert float((images.float() - expected).abs().max() / expected.abs().max()) < tolerance
    assert vae.encode(images).dtype == dtype


def _periodic_latent(height: int, width: int, period: int = 16) -> torch.Tensor:
    """A smooth latent whose statistics are the same in every tile spanning whole periods."""
    y = torch.arange(height, dtype=torch.float32)[:, None] * (2 * math.pi / period)
    x = torch.arange(width, dtype=torch.float32)[None, :] * (2 * math.pi / period)
    channels = [
        torch.sin(x) + torch.cos(y),
        torch.sin(x + y),
        0.7 * torch.cos(x - 2 * y),
        torch.sin(2 * x) * torch.cos(y),
    ]
    return torch.stack(channels)[None]


class _LocalCodec:
    """Stands in for a VAE whose output at a pixel depends only on nearby inputs (what tiling assumes):
    decode = 3x3 blur (zero padded) + nearest upsampling + a pointwise nonlinearity; encode = average
    pooling over each 4x4 cell."""

    def __init__(self, blur: bool) -> None:
        self.config = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4)
        self.blur = blur

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.blur:
            kernel = torch.full((4, 1, 3, 3), 1 / 9)
            latents = torch.nn.functional.conv2d(latents, kernel, padding=1, groups=4)
        images = torch.nn.functional.interpolate(latents[:, :3], scale_factor=4, mode="nearest")
        return torch.tanh(images)

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.nn.functional.avg_pool2d(torch.cat([images, images[:, :1]], dim=1), 4)
        return mean, torch.zeros_like(mean)


def _relative_mean_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().mean() / expected.abs().mean())


def test_tiles_cover_the_image_and_blend_exactly_for_a_pointwise_codec() -> None:
    codec = _LocalCodec(blur=False)
    latents = _periodic_latent(37, 50)  # sizes that the tiles do not divide
    full = codec.decode(latents)
    tiled = decode_tiled(codec, latents, tile=16, overlap=6)  # type: ignore[arg-type]
    torch.testing.assert_close(tiled, full, rtol=1e-6, atol=1e-6)
    images = full[:, :, :144, :192]
    torch.testing.assert_close(
        encode_tiled(codec, images, tile=64, overlap=24),  # type: ignore[arg-type]
        codec.encode_moments(images)[0],
    )


def test_feathering_hides_tile_borders_of_a_local_decoder() -> None:
    codec = _LocalCodec(blur=True)
    latents = _periodic_latent(40, 56, period=9)
    full = codec.decode(latents)
    feathered = decode_tiled(codec, latents, tile=24, overlap=8)  # type: ignore[arg-type]
    hard = decode_tiled(codec, latents, tile=24, overlap=0)  # type: ignore[arg-type]
    # Hard seams leave errors of about 0.35 along tile borders; feathering spreads them thin.
    assert float((feathered - full).abs().max()) < 0.1 < float((hard - full).abs().max())
    assert _relative_mean_error(feathered, full) < min(0.005, _relative_mean_error(hard, full) / 4)


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)).eval()


@torch.no_grad()
def test_tiled_decode_of_a_smooth_latent_is_close_to_the_full_decode(tiny_vae: AutoencoderKL) -> None:
    # A random-weight VAE is far less local than a trained one (its GroupNorm statistics are all the
    # signal there is), so the bound here is loose; the codec tests above check the blending itself.
    latents = _periodic_latent(48, 64)
    full = tiny_vae.decode(latents)
    tiled = decode_tiled(tiny_vae, latents, tile=48, overlap=16)
    assert tiled.shape == full.shape == (1, 3, 96, 128)
    assert _relative_mean_error(tiled, full) < 0.06
    assert _relative_mean_error(tiled, full) < _relative_mean_error(
        decode_tiled(tiny_vae, latents, tile=48, overlap=0), full
    )
    # One tile covering everything is exactly the full decode.
    torch.testing.assert_close(decode_tiled(tiny_vae, latents, tile=64, overlap=16), full)


@torch.no_grad()
def test_tiled_encode_is_close_to_the_full_encode(tiny_vae: AutoencoderKL) -> None:
    images = tiny_vae.decode(_periodic_latent(48, 64)).clamp(-1, 1)
    full = tiny_vae.encode(images)
    tiled = encode_tiled(tiny_vae, images, tile=96, overlap=32)
    assert tiled.shape == full.shape == (1, 4, 48, 64)
    assert _relative_mean_error(tiled, full) < 0.06
    torch.testing.assert_close(encode_tiled(tiny_vae, images, tile=128, overlap=32), full)
    sampled = encode_tiled(tiny_vae, images, tile=96, overlap=32, generator=torch.Generator().manual_seed(0))
    assert (sampled - tiled).abs().max() > 1e-3
    with pytest.raises(ValueError, match="multiples of 2"):
        encode_tiled(tiny_vae, images, tile=95, overlap=32)
