"""GLIGEN's position net and gated self-attention against diffusers' GLIGENTextBoundingboxProjection and
GatedSelfAttentionDense (tiny random configs, weights converted to the GLIGEN file layout), the
file parser's errors, and the sampling patch: only the rows whose conditioning carries GLIGEN change."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.conditioning import CondSpec, UNetApply, prepare
from engine.backend.gligen import MAX_OBJECTS, Gligen, fourier_embed, gligen_patch
from engine.backend.unet import UNetConfig, UNetModel
from engine.models.gligen import GligenFileError, parse_gligen
from tests.backend.gligen_files import fuser, gligen_state, position_net, transformer_blocks

TOL = 1e-4
TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=16, num_heads=4)
LATENT = (1, 4, 16, 16)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fourier_embedding_orders_sines_then_cosines_per_band() -> None:
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.9]]])
    emb = fourier_embed(boxes, 8)
    assert emb.shape == (1, 1, 64)
    band = 100.0 ** (3 / 8)
    torch.testing.assert_close(emb[0, 0, 3 * 8:3 * 8 + 4], torch.sin(band * boxes[0, 0]))
    torch.testing.assert_close(emb[0, 0, 3 * 8 + 4:3 * 8 + 8], torch.cos(band * boxes[0, 0]))


def test_position_net_matches_diffusers() -> None:
    reference = position_net(24, 40, seed=3)
    state = gligen_state({"input_blocks.1.1.transformer_blocks.0": 64}, 24, 40, alpha=0.3)
    state.update({f"position_net.{k}": v for k, v in reference.state_dict().items()})
    ours = parse_gligen(state, "pn.safetensors").position_net
    assert (ours.text_dim, ours.freqs, ours.object_dim) == (24, 8, 40)
    boxes = torch.rand(2, 6, 4, generator=_generator(1))
    masks = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    texts = torch.randn(2, 6, 24, generator=_generator(2))
    with torch.no_grad():
        expected = reference(boxes=boxes, masks=masks, positive_embeddings=texts)
    got = ours(boxes, masks, texts)
    assert (got - expected).abs().max() < TOL
    assert (got[1, 0] - got[1, 5]).abs().max() < TOL  # padded objects all get the null features


@pytest.mark.parametrize(("width", "object_dim"), [(128, 32), (320, 768)])
def test_fuser_matches_diffusers(width: int, object_dim: int) -> None:
    reference = fuser(width, object_dim, seed=4, alpha=0.6)
    block = "output_blocks.5.1.transformer_blocks.0"
    state = gligen_state({}, 16, object_dim, alpha=0.0)
    state.update({f"model.diffusion_model.{block}.fuser.{k}": v for k, v in reference.state_dict().items()})
    model = parse_gligen(state, "fuser.safetensors")
    ours = model.fusers[("output", 5, 0)]
    assert ours.heads == (8 if object_dim == 768 else width // 64)
    x = torch.randn(2, 20, width, generator=_generator(5))
    objs = torch.randn(2, 7, object_dim, generator=_generator(6))
    with torch.no_grad():
        expected = reference(x, objs)
    got = ours(x, objs)
    assert (got - x).abs().max() > 1e-2
    assert (got - expected).abs().max() < TOL


def test_boxes_are_normalised_by_the_latent_and_padded_to_max_objects() -> None:
    model = parse_gligen(gligen_state({"middle_block.1.transformer_blocks.0": 64}, 8, 16, alpha=0.5), "g")
    pooled = torch.randn(1, 8, generator=_generator(7))
    got = model.objects([(pooled, 4, 8, 2, 6)], 16, 32, pooled)
    boxes = torch.zeros(1, MAX_OBJECTS, 4)
    boxes[0, 0] = torch.tensor([6 / 32, 2 / 16, 14 / 32, 6 / 16])
    masks = torch.zeros(1, MAX_OBJECTS)
    masks[0, 0] = 1
    texts = torch.zeros(1, MAX_OBJECTS, 8)
    texts[0, 0] = pooled[0]
    assert got.shape == (1, MAX_OBJECTS, 16)
    torch.testing.assert_close(got, model.position_net(boxes, masks, texts))


def test_not_a_gligen_file_and_mismatched_fusers_are_refused_by_name() -> None:
    with pytest.raises(GligenFileError, match=r"lora\.safetensors is not a GLIGEN file"):
        parse_gligen({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, "lora.safetensors")
    state = gligen_state({"input_blocks.1.1.transformer_blocks.0": 64}, 8, 16, alpha=0.5)
    with pytest.raises(GligenFileError, match="no fuser tensors"):
        parse_gligen({k: v for k, v in state.items() if k.startswith("position_net.")}, "g.safetensors")
    other = gligen_state({"input_blocks.1.1.transformer_blocks.0": 64}, 8, 24, alpha=0.5)
    mixed = {**{k: v for k, v in state.items() if k.startswith("position_net.")},
             **{k: v for k, v in other.items() if not k.startswith("position_net.")}}
    with pytest.raises(GligenFileError, match="object dim 16"):
        parse_gligen(mixed, "g.safetensors")


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(TINY).eval().requires_grad_(False)


def _model(unet: UNetModel, alpha: float) -> Gligen:
    blocks = transformer_blocks((k, tuple(v.shape)) for k, v in unet.state_dict().items())
    assert len(blocks) == 7
    return parse_gligen(gligen_state(blocks, 12, 16, alpha=alpha, prefix=""), "tiny.safetensors")


def _specs(model: Gligen | None) -> tuple[list[CondSpec], list[CondSpec]]:
    def entry(seed: int, extras: dict[str, Any]) -> list[Any]:
        return [torch.randn(1, 5, 16, generator=_generator(seed)), extras]

    box = [(torch.randn(1, 12, generator=_generator(9)), 8, 6, 2, 4)]
    extras = {} if model is None else {"gligen": ("position", model, box)}
    negative = prepare([entry(10, {})], LATENT, device=torch.device("cpu"), dtype=torch.float32)
    positive = prepare([entry(11, extras)], LATENT, device=torch.device("cpu"), dtype=torch.float32)
    return negative, positive


def _run(unet: UNetModel, model: Gligen | None) -> Tensor:
    x = torch.randn(2, 4, 16, 16, generator=_generator(12))
    with torch.no_grad():
        return UNetApply(unet)(x, torch.tensor([500.0, 500.0]), list(_specs(model)))


def test_gligen_changes_only_the_rows_of_its_entries(unet: UNetModel) -> None:
    plain, grounded = _run(unet, None), _run(unet, _model(unet, 0.8))
    assert torch.equal(grounded[0], plain[0])  # the uncond row, batched with the cond row
    assert (grounded[1] - plain[1]).abs().max() > 1e-3


def test_zero_gates_give_the_plain_prediction_bit_for_bit(unet: UNetModel) -> None:
    assert torch.equal(_run(unet, _model(unet, 0.0)), _run(unet, None))


def test_no_gligen_installs_no_patch() -> None:
    spec = CondSpec(context=torch.zeros(1, 5, 16))
    assert gligen_patch(((spec, 2), (spec, 1)), LATENT, torch.zeros(1)) is None
