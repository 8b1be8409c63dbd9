"""UNet parameter layout: names and shapes equal real checkpoints; configs are inferred from shapes;
weights load into a meta-built model without a second copy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.backend.unet import SD15, SD21, SDXL, SDXL_REFINER, UNetConfig, UNetModel, load_weights
from engine.models.convert_diffusers import diffusers_unet_to_ldm
from tests.backend.conftest import read_reference_shapes

PRESETS = {"SD15": SD15, "SD21": SD21, "SDXL": SDXL, "SDXL_REFINER": SDXL_REFINER}

TINY = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    transformer_depth=(1, 1),
    transformer_depth_middle=1,
    transformer_depth_output=(1, 1, 1, 1),
    context_dim=16,
    num_heads=4,
)


def test_sd15_names_and_shapes_equal_the_real_checkpoint() -> None:
    reference = read_reference_shapes("model.diffusion_model.")
    assert len(reference) == 686
    assert SD15.expected_shapes() == reference


def test_config_is_inferred_from_the_real_sd15_listing() -> None:
    reference = read_reference_shapes("model.diffusion_model.")
    prefixed = {f"model.diffusion_model.{k}": v for k, v in reference.items()}
    prefixed["first_stage_model.encoder.conv_in.weight"] = (128, 3, 3, 3)  # other components are ignored
    assert UNetConfig.from_state_dict(prefixed, prefix="model.diffusion_model.") == SD15
    assert UNetConfig.SD15 is SD15


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_shapes(name: str) -> None:
    config = PRESETS[name]
    assert UNetConfig.from_state_dict(config.expected_shapes()) == config


@pytest.mark.parametrize(
    ("name", "parameters"),
    [("SD15", 859_520_964), ("SD21", 865_910_724), ("SDXL", 2_567_463_684), ("SDXL_REFINER", 2_259_526_660)],
)
def test_preset_parameter_counts(name: str, parameters: int) -> None:
    shapes = PRESETS[name].expected_shapes()
    assert sum(math.prod(shape) for shape in shapes.values()) == parameters


def _diffusers_layout(name: str) -> dict:
    sd_like = {
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    }
    return {
        "SD15": {**sd_like, "cross_attention_dim": 768, "attention_head_dim": 8},
        "SD21": {
            **sd_like,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "SDXL": {
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "SDXL_REFINER": {
            "block_out_channels": (384, 768, 1536, 1536),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": 4,
            "attention_head_dim": (6, 12, 24, 24),
            "cross_attention_dim": 1280,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2560,
        },
    }[name]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_the_diffusers_layout_of_the_same_model(name: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(layers_per_block=2, **_diffusers_layout(name))
    converted = diffusers_unet_to_ldm(reference.state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == PRESETS[name].expected_shapes()


def test_head_layout_inference() -> None:
    # SD1.x-like (context 768, conv projections) -> 8 heads; 64-divisible linear models -> 64-wide heads.
    assert UNetConfig.from_state_dict(SD15.expected_shapes()).num_heads == 8
    assert UNetConfig.from_state_dict(SDXL.expected_shapes()).num_head_channels == 64
    # Widths that 64 does not divide fall back to 8 heads.
    assert UNetConfig.from_state_dict(TINY.expected_shapes()).num_heads == 8


def test_building_on_meta_allocates_nothing() -> None:
    with torch.device("meta"):
        model = UNetModel(SDXL)
    assert all(p.is_meta for p in model.parameters())
    assert not list(model.buffers())  # every tensor is a checkpoint parameter: assign-loading covers all


def test_load_weights_fills_a_meta_model_one_tensor_at_a_time() -> None:
    torch.manual_seed(0)
    source = UNetModel(TINY).eval()
    with torch.device("meta"):
        target = UNetModel(TINY)
    half = {k: v.half() for k, v in source.state_dict().items()}
    load_weights(target, half.items(), device="cpu", dtype=torch.float32)
    assert not any(p.is_meta for p in target.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in target.parameters())
    for name, value in target.state_dict().items():
        torch.testing.assert_close(value, half[name].float(), rtol=0, atol=0)


def test_load_weights_reports_unexpected_misshapen_and_missing_weights() -> None:
    weights = UNetModel(TINY).state_dict()
    with torch.device("meta"):
        target = UNetModel(TINY)
    with pytest.raises(KeyError, match="no_such"):
        load_weights(target, [("no_such.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="out.2.weight"):
        load_weights(target, [("out.2.weight", torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="weights missing"):
        load_weights(target, [(k, v) for k, v in weights.items() if k != "out.2.bias"])


def test_from_state_dict_adopts_the_tensors_without_copying() -> None:
    torch.manual_seed(0)
    weights = {f"model.diffusion_model.{k}": v for k, v in UNetModel(TINY).state_dict().items()}
    weights["cond_stage_model.ignored"] = torch.zeros(1)
    config = dataclasses.replace(UNetConfig.from_state_dict(weights, "model.diffusion_model."), num_heads=4)
    model = UNetModel.from_state_dict(weights, prefix="model.diffusion_model.", config=config)
    assert model.config == TINY
    assert model.out[2].weight.data_ptr() == weights["model.diffusion_model.out.2.weight"].data_ptr()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_res_blocks": (1,)}, "num_res_blocks"),
        ({"transformer_depth": (1,)}, "transformer_depth needs"),
        ({"transformer_depth_output": (1, 1)}, "transformer_depth_output needs"),
        ({"num_head_channels": 8}, "exactly one"),
        ({"context_dim": None}, "context_dim"),
        ({"model_channels": 40}, "multiple of 32"),
    ],
)
def test_invalid_configs_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_from_state_dict_without_a_unet_says_so() -> None:
    with pytest.raises(ValueError, match=r"model\.diffusion_model\.input_blocks\.0\.0\.weight"):
        UNetConfig.from_state_dict({"first_stage_model.x": (1,)}, prefix="model.diffusion_model.")
