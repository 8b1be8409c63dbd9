"""engine/models/convert_diffusers.py against diffusers' own UNet2DConditionModel (built on the meta device,
so full-size configurations cost no memory): every parameter name maps to Loom's, with the same shape."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.backend.unet import UNetConfig, UNetModel
from engine.models.convert_diffusers import UNetLayout, diffusers_unet_to_ldm, unet_names

diffusers = pytest.importorskip("diffusers")

_SDXL_COMMON: dict[str, Any] = {"use_linear_projection": True, "addition_embed_type": "text_time",
                                "addition_time_embed_dim": 256}
CONFIGS: dict[str, tuple[UNetConfig, dict[str, Any]]] = {
    "sd15": (UNetConfig.SD15, {"cross_attention_dim": 768, "attention_head_dim": 8}),
    "sd21": (UNetConfig.SD21, {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                               "use_linear_projection": True}),
    "sdxl": (UNetConfig.SDXL, {
        **_SDXL_COMMON, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280), "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
        "projection_class_embeddings_input_dim": 2816}),
    "sdxl_refiner": (UNetConfig.SDXL_REFINER, {
        **_SDXL_COMMON,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (384, 768, 1536, 1536), "transformer_layers_per_block": 4,
        "attention_head_dim": (6, 12, 24, 24), "cross_attention_dim": 1280,
        "projection_class_embeddings_input_dim": 2560}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_diffusers_name_maps_to_loom(name: str) -> None:
    config, kwargs = CONFIGS[name]
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**kwargs)
        ours = UNetModel(config)
    theirs = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    expected = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert diffusers_unet_to_ldm(theirs, config) == expected
    assert diffusers_unet_to_ldm(theirs) == expected  # layout read from the diffusers names themselves
    names = unet_names(UNetLayout.from_config(config))
    assert {names.to_diffusers(key) for key in expected} == set(theirs)


def test_module_paths_and_errors() -> None:
    names = unet_names(UNetLayout.from_config(UNetConfig.SD15))
    assert names.to_diffusers("input_blocks.1.1.transformer_blocks.0.attn1.to_q") == (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert names.to_diffusers("output_blocks.5.2.conv") == "up_blocks.1.upsamplers.0.conv"
    assert names.to_ldm("mid_block.resnets.1.time_emb_proj") == "middle_block.2.emb_layers.1"
    with pytest.raises(KeyError, match="input_blocks.12"):
        names.to_diffusers("input_blocks.12.0.in_layers.0.weight")
