"""CLIP vision loading (transformers and OpenCLIP key layouts) and encoding against transformers' own
forward; CLIP preprocessing by hand; the unCLIP noise augmentation against diffusers' DDPM scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.backend.clip_vision import CLIP_MEAN, CLIP_STD, encode, preprocess
from engine.backend.unclip import noise_augment, noise_level, schedule, unclip_pooled
from engine.models.clip_vision import describe_clip_vision, load_clip_vision, vision_config
from engine.models.handles import FileRef
from engine.models.loaders import UnsupportedModel
from tests.fixtures.tiny_clip_vision import hf_state, openclip_state, save, tiny_vision_model


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return tiny_vision_model(projection_dim=48, seed=3)


@pytest.fixture(scope="module")
def files(reference: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip_vision")
    state = hf_state(reference)
    return {"transformers": save(state, root / "tiny_hf.safetensors"),
            "openclip": save(openclip_state(state), root / "tiny_openclip.safetensors")}


def _image(seed: int = 0, height: int = 45, width: int = 60) -> torch.Tensor:
    return torch.rand((2, height, width, 3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["transformers", "openclip"])
def test_encode_matches_transformers_forward(layout: str, files: dict[str, Path], reference: torch.nn.Module) -> None:
    model, label = load_clip_vision(FileRef.of(files[layout]))
    assert "width 64" in label and "32px" in label and "embeds 48" in label
    pixels = preprocess(_image(), size=32, crop=True)
    ours = encode(model, pixels)
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, output_hidden_states=True)
    assert ours.image_embeds.shape == (2, 48) and ours.last_hidden_state.shape == (2, 17, 64)
    torch.testing.assert_close(ours.image_embeds, theirs.image_embeds, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.penultimate_hidden_states, theirs.hidden_states[-2], rtol=0, atol=1e-4)
    assert not torch.allclose(ours.penultimate_hidden_states, ours.last_hidden_state, atol=1e-3)


def test_the_tower_is_cached_per_file_version(files: dict[str, Path]) -> None:
    first, _ = load_clip_vision(FileRef.of(files["transformers"]))
    again, _ = load_clip_vision(FileRef.of(files["transformers"]))
    assert first is again


def test_a_file_that_is_not_clip_vision_is_refused(tmp_path: Path) -> None:
    path = save({"weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(UnsupportedModel, match="not a CLIP vision model"):
        load_clip_vision(FileRef.of(path))


@pytest.mark.parametrize(("width", "layers", "mlp", "proj", "name", "act"), [
    (1024, 24, 4096, 768, "ViT-L/14", "quick_gelu"),
    (1280, 32, 5120, 1024, "ViT-H/14", "gelu"),
    (1664, 48, 8192, 1280, "ViT-bigG/14", "gelu"),
])
def test_real_towers_are_told_apart_by_shapes(width: int, layers: int, mlp: int, proj: int, name: str,
                                              act: str) -> None:
    shapes = {"vision_model.embeddings.class_embedding": (width,),
              "vision_model.embeddings.patch_embedding.weight": (width, 3, 14, 14),
              "vision_model.embeddings.position_embedding.weight": (257, width),
              "vision_model.encoder.layers.0.mlp.fc1.weight": (mlp, width),
              "visual_projection.weight": (proj, width)}
    shapes |= {f"vision_model.encoder.layers.{i}.layer_norm1.weight": (width,) for i in range(layers)}
    config = vision_config(shapes)
    assert (config.image_size, config.patch_size, config.num_attention_heads) == (224, 14, 16)
    assert (config.projection_dim, config.intermediate_size, config.hidden_act) == (proj, mlp, act)
    assert describe_clip_vision(config).startswith(name)


def test_preprocess_by_hand() -> None:
    # A wide 32x64 image, left half black and right half white: the short side is already 32, so "center"
    # keeps columns 16..47 (16 black, 16 white) and only normalises.
    image = torch.zeros((1, 32, 64, 3))
    image[:, :, 32:] = 1.0
    pixels = preprocess(image, size=32, crop=True)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = torch.zeros((3, 32, 32))
    expected[:, :, 16:] = 1.0
    torch.testing.assert_close(pixels[0], (expected - mean) / std, rtol=0, atol=1e-6)
    # A flat colour stays flat through the bicubic resize; values are rounded to 8 bits first.
    flat = torch.full((1, 45, 60, 3), 0.25)  # 63.75 -> 64 of 255
    for crop in (True, False):
        out = preprocess(flat, size=32, crop=crop)
        assert out.shape == (1, 3, 32, 32)
        torch.testing.assert_close(out[0], ((64 / 255 - mean) / std)
                                   .expand(3, 32, 32), rtol=0, atol=1e-5)
    # "none" squashes the whole picture: both halves survive, side by side, symmetric about the middle.
    squashed = preprocess(image, size=32, crop=False)[0, 0]
    assert squashed[:, 0].max() < squashed[:, -1].min()
    torch.testing.assert_close(squashed[:, :16], squashed.flip(1)[:, :16].neg() + squashed[:, 0:1]
                               + squashed[:, -1:], rtol=0, atol=1e-4)
    assert preprocess(torch.rand((1, 40, 40, 4)), size=32).shape == (1, 3, 32, 32)  # alpha dropped


def test_noise_augmentation_matches_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_timestep_embedding

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    embeds = torch.randn((2, 64), generator=torch.Generator().manual_seed(1))
    noise = torch.randn((2, 64), generator=torch.Generator().manual_seed(2))
    for amount in (0.0, 0.25, 1.0):
        level = noise_level(amount)
        ours, level_emb = noise_augment(embeds, level, noise)
        t = torch.tensor([level] * 2)
        theirs = scheduler.add_noise(embeds, noise, t)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
        emb = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
        torch.testing.assert_close(level_emb, emb, rtol=0, atol=1e-4)
    assert noise_level(1.0) == 999 and noise_level(0.5) == 500


def test_unclip_pooled_seeds_and_sums() -> None:
    class Out:
        def __init__(self, embeds: torch.Tensor) -> None:
            self.image_embeds = embeds

    a, b = torch.randn((1, 32)), torch.randn((1, 32))
    sqrt_acp, sqrt_one_minus = schedule()
    first = torch.randn((1, 32), generator=torch.Generator().manual_seed(42 - 10))
    one = unclip_pooled([{"clip_vision_output": Out(a), "strength": 0.5, "noise_augmentation": 0.0}], 42)
    torch.testing.assert_close(one, 0.5 * (sqrt_acp[0] * a + sqrt_one_minus[0] * first), rtol=0, atol=1e-6)
    assert torch.equal(one, unclip_pooled([{"clip_vision_output": Out(a), "strength": 0.5,
                                            "noise_augmentation": 0.0}], 42))
    level = noise_level(0.3)
    entries = [{"clip_vision_output": Out(a), "strength": 1.0, "noise_augmentation": 0.3},
               {"clip_vision_output": Out(b), "strength": 2.0, "noise_augmentation": 0.0}]
    gen = torch.Generator().manual_seed(32)
    noise, merge = torch.randn((1, 32), generator=gen), torch.randn((1, 32), generator=gen)
    summed = (sqrt_acp[level] * a + sqrt_one_minus[level] * noise) + 2.0 * (sqrt_acp[0] * b + sqrt_one_minus[0] * noise)
    torch.testing.assert_close(unclip_pooled(entries, 42), sqrt_acp[0] * summed + sqrt_one_minus[0] * merge,
                               rtol=0, atol=1e-5)
