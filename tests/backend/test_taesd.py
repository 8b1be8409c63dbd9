"""TAESD: files in the published key layout load (width read from the weights), and our forward matches
diffusers' AutoencoderTiny (diffusers' TAESD) on the same weights; the preview method picks TAESD or
latent2rgb by what models/vae_approx holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.backend.taesd import TinyAutoencoder, build_decoder, load_decoder
from engine.errors import ModelError
from engine.folders import Folders
from engine.models.taesd_load import load_tiny_vae
from engine.vae_approx import preview_decoder, tiny_vae_names

diffusers = pytest.importorskip("diffusers")


def tiny_reference(width: int, latent_channels: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    model = diffusers.AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4,
                                      latent_channels=latent_channels)
    with torch.no_grad():  # diffusers' init leaves biases small; spread them so a wrong wiring shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def taesd_files(reference: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """diffusers' names -> TAESD's bare index keys: the decoder's layers shift by one (its Clamp is index 0
    in TAESD and a line of forward() in diffusers); the encoder's keep their index."""
    decoder, encoder = {}, {}
    for key, value in reference.state_dict().items():
        part, _, index, rest = key.split(".", 3)
        if part == "decoder":
            decoder[f"{int(index) + 1}.{rest}"] = value.clone()
        else:
            encoder[f"{index}.{rest}"] = value.clone()
    return decoder, encoder


def write_pair(folder: Path, name: str, reference: torch.nn.Module, suffix: str = ".safetensors") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    decoder, encoder = taesd_files(reference)
    for part, state in (("decoder", decoder), ("encoder", encoder)):
        path = folder / f"{name}_{part}{suffix}"
        if suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, str(path))


@pytest.mark.parametrize(("width", "suffix"), [(64, ".safetensors"), (16, ".pth")])
def test_matches_diffusers_autoencoder_tiny(tmp_path: Path, width: int, suffix: str) -> None:
    reference = tiny_reference(width)
    write_pair(tmp_path, "taesd", reference, suffix)
    ours = load_tiny_vae("taesd", tmp_path / f"taesd_decoder{suffix}", tmp_path / f"taesd_encoder{suffix}",
                         device=torch.device("cpu"), dtype=torch.float32)
    assert ours.decoder is not None and ours.decoder[1].out_channels == width  # type: ignore[union-attr]
    latents = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 2.5
    images = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected_images = reference.decoder(latents)
        expected_latents = reference.encoder(images)
        got_images = ours.decode_model_space(latents)
        got_latents = ours.encode(images) * 0.18215
    assert got_images.shape == (2, 3, 40, 48)
    torch.testing.assert_close(got_images, expected_images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_latents, expected_latents, atol=1e-5, rtol=1e-5)
    assert float(expected_images.std()) > 0.01  # a real comparison, not of two constants


def test_decode_takes_unscaled_vae_latents() -> None:
    torch.manual_seed(3)
    tiny = TinyAutoencoder(build_decoder(8).eval(), None, scale=0.13025)
    raw = torch.randn(1, 4, 3, 3) * 7
    with torch.no_grad():
        torch.testing.assert_close(tiny.decode(raw), tiny.decode_model_space(raw * 0.13025))
        clamped = tiny.decode_model_space(torch.full((1, 4, 3, 3), 50.0))
        assert torch.equal(clamped, tiny.decode_model_space(torch.full((1, 4, 3, 3), 80.0)))  # tanh clamp ~3
    with pytest.raises(ValueError, match="no encoder"):
        tiny.encode(torch.zeros(1, 3, 24, 24))


def test_wrong_file_says_what_a_taesd_file_holds(tmp_path: Path) -> None:
    save_file({"decoder.layers.0.weight": torch.zeros(16, 4, 3, 3)}, str(tmp_path / "taesd_decoder.safetensors"))
    with pytest.raises(ModelError, match="bare index keys"):
        load_tiny_vae("taesd", tmp_path / "taesd_decoder.safetensors", None, device=torch.device("cpu"),
                      dtype=torch.float32)
    with pytest.raises(ValueError, match="1.weight"):
        load_decoder({})


def test_preview_method_auto_picks_taesd_only_when_its_decoder_is_there(tmp_path: Path) -> None:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (tmp_path / "models",))
    approx = tmp_path / "models" / "vae_approx"
    approx.mkdir(parents=True)
    assert preview_decoder(folders, "auto", is_sdxl=False) is None  # latent2rgb
    assert preview_decoder(folders, "taesd", is_sdxl=False) is None
    save_file(dict(taesd_files(tiny_reference(8))[0]), str(approx / "taesd_decoder.safetensors"))
    assert preview_decoder(folders, "auto", is_sdxl=False) == approx / "taesd_decoder.safetensors"
    assert preview_decoder(folders, "taesd", is_sdxl=False) == approx / "taesd_decoder.safetensors"
    assert preview_decoder(folders, "latent2rgb", is_sdxl=False) is None
    assert preview_decoder(folders, "auto", is_sdxl=True) is None  # SDXL needs taesdxl_decoder
    assert tiny_vae_names(folders) == []  # VAELoader needs the encoder too
    write_pair(approx, "taesdxl", tiny_reference(8), ".pth")
    assert preview_decoder(folders, "auto", is_sdxl=True) == approx / "taesdxl_decoder.pth"
    assert tiny_vae_names(folders) == ["taesdxl"]
