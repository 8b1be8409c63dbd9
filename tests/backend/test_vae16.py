"""The 16-channel AutoencoderKL of SD3/SD3.5 and Flux (no quant_conv / post_quant_conv): config detection
from the keys, loading from a real .safetensors file by VAELoader's path (an SD3 single-file checkpoint's
``first_stage_model.`` keys, Flux's bare ``encoder.`` / ``decoder.`` keys, diffusers' names), and encode
and decode equal to diffusers' AutoencoderKL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.vae import AutoencoderKL, VAEConfig, encode_tiled
from engine.models.handles import FileRef, VaeHandle
from engine.models.inspection import vae_prefix
from engine.models.manager import ModelManager
from tests.backend.conftest import diffusers_vae_to_ldm, randomize_norms, read_reference_shapes, relative_error

TINY16 = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16, use_quant_conv=False)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> Any:
    """A tiny diffusers AutoencoderKL laid out like SD3's and Flux's, with seeded weights and norms."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    randomize_norms(model, torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="module")
def files(reference: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference's weights saved as .safetensors files in the layouts VAELoader meets."""
    root = tmp_path_factory.mktemp("vae16")
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    ldm = diffusers_vae_to_ldm(state, levels=2)
    layouts = {
        # An SD3 single-file checkpoint: the VAE under first_stage_model. next to the other parts.
        "sd3": {**{f"first_stage_model.{k}": v for k, v in ldm.items()},
                "model.diffusion_model.x_embedder.proj.weight": torch.zeros(64, 16, 2, 2)},
        "flux": ldm,  # ae.safetensors: bare encoder./decoder. keys
        "diffusers": state,  # a diffusers vae/ folder's weights
    }
    paths = {}
    for name, tensors in layouts.items():
        paths[name] = root / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(paths[name]))
    return paths


def _load(path: Path) -> AutoencoderKL:
    """VAELoader's path: the prefix from the file's keys, then the model manager's load."""
    handle = VaeHandle(FileRef.of(path), vae_prefix(path, path.name))
    vae = ModelManager("cpu").vae(handle)
    assert isinstance(vae, AutoencoderKL)
    return vae


def test_16_channel_config_is_inferred_from_the_keys() -> None:
    assert VAEConfig.from_state_dict(TINY16.expected_shapes()) == TINY16
    full = VAEConfig.SD3.expected_shapes()
    assert VAEConfig.FLUX == VAEConfig.SD3 and VAEConfig.from_state_dict(full) == VAEConfig.SD3
    assert full["encoder.conv_out.weight"] == (32, 512, 3, 3) and full["decoder.conv_in.weight"] == (512, 16, 3, 3)
    assert not any("quant_conv" in name for name in full)
    # Everything but the quant convs is SD's VAE: same names and shapes, apart from the latent width.
    sd = read_reference_shapes("first_stage_model.")
    latent = {"encoder.conv_out.weight", "encoder.conv_out.bias", "decoder.conv_in.weight"}
    assert {k: v for k, v in sd.items() if "quant_conv" not in k and k not in latent} == {
        k: v for k, v in full.items() if k not in latent}
    prefixed = {f"first_stage_model.{k}": v for k, v in full.items()}
    assert VAEConfig.from_state_dict(prefixed, prefix="first_stage_model.") == VAEConfig.SD3


def test_inconsistent_or_missing_vae_weights_are_reported() -> None:
    shapes = TINY16.expected_shapes()
    with pytest.raises(ValueError, match=r"first_stage_model\.decoder\.conv_in\.weight is missing"):
        VAEConfig.from_state_dict({f"first_stage_model.{k}": v for k, v in shapes.items()
                                   if not k.startswith("decoder.")}, prefix="first_stage_model.")
    with pytest.raises(ValueError, match=r"encoder\.conv_out\.weight has 16 output channels, expected 2 x 16"):
        VAEConfig.from_state_dict({**shapes, "encoder.conv_out.weight": (16, 64, 3, 3)})
    with pytest.raises(ValueError, match="post_quant_conv.weight without its counterpart"):
        VAEConfig.from_state_dict({**shapes, "post_quant_conv.weight": (16, 16, 1, 1)})
    with pytest.raises(ValueError, match="embed_dim .4. must equal z_channels .16."):
        VAEConfig(z_channels=16, embed_dim=4, use_quant_conv=False)


def test_a_file_that_is_not_a_vae_is_reported(tmp_path: Path) -> None:
    unet = tmp_path / "flux-unet.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(unet))
    with pytest.raises(ValueError, match=r"flux-unet.safetensors holds no VAE decoder \(no decoder.conv_in.weight\)"):
        vae_prefix(unet, unet.name)
    decoder_only = tmp_path / "decoder-only.safetensors"
    save_file({k: torch.zeros(v) for k, v in TINY16.expected_shapes().items() if k.startswith("decoder.")},
              str(decoder_only))
    with pytest.raises(ValueError, match=r"encoder\.conv_in\.weight is missing"):
        _load(decoder_only)


@pytest.mark.parametrize("layout", ["sd3", "flux", "diffusers"])
def test_file_loads_by_vaeloaders_path(files: dict[str, Path], layout: str) -> None:
    assert vae_prefix(files[layout], layout) == ("first_stage_model." if layout == "sd3" else "")
    vae = _load(files[layout])
    assert vae.config == TINY16
    assert not any("quant_conv" in name for name in vae.state_dict())


@torch.no_grad()
@pytest.mark.parametrize("layout", ["sd3", "flux"])
def test_encode_and_decode_match_diffusers(reference: Any, files: dict[str, Path], layout: str) -> None:
    vae = _load(files[layout])
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 24, 32, generator=generator) * 2 - 1
    mean = vae.encode(images)
    expected_mean = reference.encode(images).latent_dist.mean
    assert mean.shape == expected_mean.shape == (2, 16, 12, 16)
    assert relative_error(mean, expected_mean) < TOLERANCE
    assert float((mean - expected_mean).abs().max()) < TOLERANCE
    latents = torch.randn(2, 16, 12, 10, generator=generator)
    decoded, expected = vae.decode(latents), reference.decode(latents).sample
    assert decoded.shape == expected.shape == (2, 3, 24, 20)
    assert relative_error(decoded, expected) < TOLERANCE
    assert float((decoded - expected).abs().max()) < TOLERANCE


@torch.no_grad()
def test_sampling_and_tiled_encode_keep_16_channels(files: dict[str, Path]) -> None:
    vae = _load(files["flux"])
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean = vae.encode(images)
    sample = vae.encode(images, generator=torch.Generator().manual_seed(4))
    assert sample.shape == mean.shape == (1, 16, 16, 16) and float((sample - mean).abs().max()) > 1e-3
    torch.testing.assert_close(encode_tiled(vae, images, tile=64, overlap=16), mean)
