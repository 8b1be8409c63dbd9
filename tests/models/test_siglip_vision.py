"""SigLIP vision towers (Flux Redux's) through Loom's CLIP vision loader: a tiny ``SiglipVisionModel`` saved in
the released file's key layout, loaded and run against transformers' own forward; SigLIP's preprocessing
against a hand computation (antialiased bicubic resize written out, 8-bit rounding, mean/std 0.5); the config
of the real so400m file from its shapes; Redux at the real sizes (on the meta device) appending 729 tokens of
4096 to a Flux T5 context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional
from transformers import SiglipVisionModel

from engine.backend.clip_vision import SIGLIP_MEAN, SIGLIP_STD, encode_image, preprocess
from engine.backend.style_models import ReduxImageEncoder, apply_style, build_style_model
from engine.models.clip_vision import describe_clip_vision, load_clip_vision, siglip_config
from engine.models.handles import FileRef
from engine.models.loaders import UnsupportedModel
from tests.fixtures.tiny_clip_vision import save
from tests.fixtures.tiny_siglip import IMAGE, LAYERS, TOKENS, WIDTH, siglip_file_state, tiny_siglip


@pytest.fixture(scope="module")
def reference() -> SiglipVisionModel:
    return tiny_siglip(seed=3)


@pytest.fixture(scope="module")
def siglip_file(reference: SiglipVisionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(siglip_file_state(reference), tmp_path_factory.mktemp("siglip") / "tiny_sigclip.safetensors")


def _image(seed: int = 0, height: int = 36, width: int = 60) -> Tensor:
    return torch.rand((2, height, width, 3), generator=torch.Generator().manual_seed(seed))


def test_siglip_tower_matches_transformers_forward(siglip_file: Path, reference: SiglipVisionModel) -> None:
    model, label = load_clip_vision(FileRef.of(siglip_file))
    assert label == f"SigLIP vision ({LAYERS} layers, width {WIDTH}, {IMAGE}px, {TOKENS} tokens)"
    assert model.config.num_attention_heads == 2 and not hasattr(model, "head")  # pooling head left out
    ours = encode_image(model, _image(), crop=True)
    pixels = preprocess(_image(), size=IMAGE, crop=True, mean=SIGLIP_MEAN, std=SIGLIP_STD)
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, output_hidden_states=True)
    assert ours.last_hidden_state.shape == (2, TOKENS, WIDTH)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.penultimate_hidden_states, theirs.hidden_states[-2], rtol=0, atol=1e-5)
    assert torch.equal(ours.image_embeds, ours.last_hidden_state)  # ComfyUI: SigLIP's embeds are the tokens
    # last_hidden_state is the last layer's stream after the post layer norm (eps 1e-6)
    norm = reference.post_layernorm
    assert isinstance(norm, torch.nn.LayerNorm)
    normed = functional.layer_norm(theirs.hidden_states[-1], (WIDTH,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(ours.last_hidden_state, normed, rtol=0, atol=1e-5)
    assert not torch.allclose(theirs.hidden_states[-1], ours.last_hidden_state, atol=1e-2)
    squashed = encode_image(model, _image(), crop=False)
    assert not torch.allclose(squashed.last_hidden_state, ours.last_hidden_state, atol=1e-3)


def _cubic(t: float) -> float:
    """The bicubic kernel with a = -0.5 (PIL's and torch's antialiased resize)."""
    t, a = abs(t), -0.5
    if t < 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    return (((t - 5) * t + 8) * t - 4) * a if t < 2 else 0.0


def _resize_matrix(n_in: int, n_out: int) -> Tensor:
    """Rows of antialiased bicubic weights: output i samples the input around (i + 0.5) * scale, with the
    kernel stretched by the scale when shrinking, and taps outside the image dropped (weights renormalised)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    weights = torch.zeros((n_out, n_in), dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        for j in range(max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), n_in)):
            weights[i, j] = _cubic((j + 0.5 - centre) / stretch)
        weights[i] /= weights[i].sum()
    return weights


def _by_hand(image: Tensor, rows: tuple[int, int], cols: tuple[int, int], size: int) -> Tensor:
    """Resize each channel with the weight matrices, take the centre square, round to 8 bits, normalise."""
    pixels = image[0].double().permute(2, 0, 1)
    resized = _resize_matrix(*rows) @ pixels @ _resize_matrix(*cols).T
    top, left = (resized.shape[1] - size) // 2, (resized.shape[2] - size) // 2
    square = resized[:, top:top + size, left:left + size]
    return (torch.clamp(255 * square, 0, 255).round() / 255 - 0.5) / 0.5


def test_siglip_preprocess_by_hand() -> None:
    image = _image(seed=5)[:1]  # 36 x 60
    centre = preprocess(image, size=IMAGE, crop=True, mean=SIGLIP_MEAN, std=SIGLIP_STD)[0]
    # crop: the short side 36 -> 24, the long side round(60 x 24 / 36) = 40, then the middle 24 columns
    torch.testing.assert_close(centre.double(), _by_hand(image, (36, 24), (60, 40), IMAGE), rtol=0, atol=1e-5)
    squashed = preprocess(image, size=IMAGE, crop=False, mean=SIGLIP_MEAN, std=SIGLIP_STD)[0]
    torch.testing.assert_close(squashed.double(), _by_hand(image, (36, 24), (60, 24), IMAGE), rtol=0, atol=1e-5)
    # already square at the tower's size: no resampling, only rounding and (x - 0.5) / 0.5
    exact = torch.rand((1, IMAGE, IMAGE, 4), generator=torch.Generator().manual_seed(6))
    out = preprocess(exact, size=IMAGE, crop=True, mean=SIGLIP_MEAN, std=SIGLIP_STD)[0]
    expected = (torch.round(255 * exact[0, ..., :3]) / 255 - 0.5) / 0.5
    torch.testing.assert_close(out, expected.permute(2, 0, 1), rtol=0, atol=1e-6)


Shapes = dict[str, tuple[int, ...]]


def _so400m_shapes(positions: int = 729, patch_shape: tuple[int, ...] = (1152, 3, 14, 14)) -> Shapes:
    shapes: Shapes = {
        "vision_model.embeddings.patch_embedding.weight": patch_shape,
        "vision_model.embeddings.patch_embedding.bias": (1152,),
        "vision_model.embeddings.position_embedding.weight": (positions, 1152),
        "vision_model.encoder.layers.0.mlp.fc1.weight": (4304, 1152),
        "vision_model.post_layernorm.weight": (1152,), "vision_model.head.probe": (1, 1, 1152)}
    shapes |= {f"vision_model.encoder.layers.{i}.layer_norm1.weight": (1152,) for i in range(27)}
    return shapes


def test_the_real_sigclip_file_is_read_from_its_shapes() -> None:
    config = siglip_config(_so400m_shapes())
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (1152, 27, 4304)
    assert (config.num_attention_heads, config.patch_size, config.image_size) == (16, 14, 384)
    assert config.hidden_act == "gelu_pytorch_tanh" and not config.vision_use_head
    assert describe_clip_vision(config) == "SigLIP so400m/14 (27 layers, width 1152, 384px, 729 tokens)"
    with pytest.raises(ValueError, match="square"):
        siglip_config(_so400m_shapes(positions=730))
    with pytest.raises(ValueError, match="NaFlex"):
        siglip_config(_so400m_shapes(patch_shape=(1152, 588)))


def test_unknown_siglip_structures_are_refused(tmp_path: Path, reference: SiglipVisionModel) -> None:
    state = siglip_file_state(reference)
    state["vision_model.embeddings.position_embedding.weight"] = torch.zeros((35, WIDTH))
    with pytest.raises(UnsupportedModel, match="SigLIP vision weights of an unknown structure.*35 positions"):
        load_clip_vision(FileRef.of(save(state, tmp_path / "odd.safetensors")))
    state = siglip_file_state(reference)
    del state["vision_model.post_layernorm.weight"]
    with pytest.raises(UnsupportedModel, match="lacks 1 weights.*post_layernorm"):
        load_clip_vision(FileRef.of(save(state, tmp_path / "partial.safetensors")))


def test_redux_at_real_sizes_appends_729_tokens_to_a_flux_context() -> None:
    shapes = {"redux_up.weight": (3 * 4096, 1152), "redux_up.bias": (3 * 4096,),
              "redux_down.weight": (4096, 3 * 4096), "redux_down.bias": (4096,)}
    with torch.device("meta"):
        redux = build_style_model(shapes)
        tokens = redux(torch.empty((1, 729, 1152)))
        context = torch.empty((1, 256, 4096))
    assert isinstance(redux, ReduxImageEncoder) and redux.input_width == 1152
    assert tokens.shape == (1, 729, 4096)
    [[joined, extras]] = apply_style([[context, {"guidance": 3.5}]], tokens, 0.5, "multiply")
    assert isinstance(joined, Tensor) and joined.shape == (1, 256 + 729, 4096) and extras == {"guidance": 3.5}
