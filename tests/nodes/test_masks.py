"""Mask nodes: values, shapes, and GrowMask against scipy's grey morphology (ComfyUI's reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from engine.context import RunContext
from engine.folders import Folders
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.masks import (
    GrowMask,
    ImageCompositeMasked,
    ImageToMask,
    InvertMask,
    MaskToImage,
    SolidMask,
    ThresholdMask,
)


def test_solid_invert_threshold(ctx: RunContext) -> None:
    [solid] = SolidMask().run(ctx, 0.25, 12, 7)
    assert solid.shape == (1, 7, 12) and torch.equal(solid, torch.full((1, 7, 12), 0.25))
    [inverted] = InvertMask().run(ctx, solid[0])  # [H, W] is accepted too
    assert inverted.shape == (1, 7, 12) and torch.equal(inverted, torch.full((1, 7, 12), 0.75))
    mask = torch.tensor([[[0.1, 0.5, 0.9]]])
    assert ThresholdMask().run(ctx, mask, 0.5)[0].tolist() == [[[0.0, 0.0, 1.0]]]


def test_mask_image_conversions(ctx: RunContext) -> None:
    mask = torch.rand(2, 5, 6)
    [image] = MaskToImage().run(ctx, mask)
    assert image.shape == (2, 5, 6, 3) and all(torch.equal(image[..., c], mask) for c in range(3))
    rgba = torch.rand(2, 5, 6, 4)
    for index, channel in enumerate(("red", "green", "blue", "alpha")):
        assert torch.equal(ImageToMask().run(ctx, rgba, channel)[0], rgba[..., index])
    with pytest.raises(ValueError, match="no alpha channel"):
        ImageToMask().run(ctx, image, "alpha")


@pytest.mark.parametrize("tapered", [True, False])
@pytest.mark.parametrize("expand", [3, 1, 0, -2])
def test_grow_mask_matches_grey_morphology(ctx: RunContext, tapered: bool, expand: int) -> None:
    generator = torch.Generator().manual_seed(expand + 10 * tapered)
    mask = (torch.rand(2, 17, 13, generator=generator) > 0.8).float() * torch.rand(2, 17, 13, generator=generator)
    mask[1, 0, 0] = 1.0  # a pixel in the corner: edges are handled like scipy's default (reflect)
    corner = 0 if tapered else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]], dtype=bool)
    expected = []
    for item in mask.numpy():
        for _ in range(abs(expand)):
            morph = ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion
            item = morph(item, footprint=footprint)
        expected.append(torch.from_numpy(np.ascontiguousarray(item)))
    [grown] = GrowMask().run(ctx, mask, expand, tapered)
    torch.testing.assert_close(grown, torch.stack(expected), rtol=0, atol=0)


def test_grow_mask_shape_of_growth(ctx: RunContext) -> None:
    dot = torch.zeros(1, 9, 9)
    dot[0, 4, 4] = 1.0
    diamond = GrowMask().run(ctx, dot, 2, True)[0][0]
    square = GrowMask().run(ctx, dot, 2, False)[0][0]
    assert square.sum() == 25 and square[2:7, 2:7].all()
    assert diamond.sum() == 13 and diamond[4, 2] == 1 and diamond[2, 2] == 0  # |dy| + |dx| <= 2
    assert torch.equal(GrowMask().run(ctx, square, -2, False)[0], dot)


def test_image_composite_masked(ctx: RunContext) -> None:
    destination = torch.zeros(1, 8, 10, 3)
    source = torch.ones(1, 4, 4, 3)
    [plain] = ImageCompositeMasked().run(ctx, destination, source, 2, 3, False)
    assert plain[0, 3:7, 2:6].eq(1).all() and plain.sum() == 16 * 3
    assert destination.sum() == 0  # inputs are not mutated
    mask = torch.zeros(4, 4)
    mask[:, :2] = 0.5
    [masked] = ImageCompositeMasked().run(ctx, destination, source, 2, 3, False, mask)
    assert masked[0, 3:7, 2:4].eq(0.5).all() and masked[0, 3:7, 4:6].eq(0).all()
    [clipped] = ImageCompositeMasked().run(ctx, destination, source, 8, 6, False)  # hangs over the corner
    assert clipped.shape == (1, 8, 10, 3) and clipped[0, 6:, 8:].eq(1).all() and clipped.sum() == 4 * 3
    [resized] = ImageCompositeMasked().run(ctx, destination, source, 0, 0, True)
    torch.testing.assert_close(resized, torch.ones(1, 8, 10, 3))
    [rgba] = ImageCompositeMasked().run(ctx, torch.zeros(1, 8, 10, 4), source, 0, 0, False)
    assert rgba.shape == (1, 8, 10, 4) and rgba[0, :4, :4].eq(1).all()


def test_object_info_matches_comfyui(folders: Folders) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info(folders)
    required = {name: info[name]["input"]["required"] for name in info}
    assert info["VAEEncodeForInpaint"]["input_order"]["required"] == ["pixels", "vae", "mask", "grow_mask_by"]
    assert required["VAEEncodeForInpaint"]["grow_mask_by"][0] == "INT"
    assert {k: required["VAEEncodeForInpaint"]["grow_mask_by"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 6, "min": 0, "max": 64, "step": 1}
    assert info["VAEEncodeForInpaint"]["category"] == "latent/inpaint"
    assert info["SetLatentNoiseMask"]["input_order"]["required"] == ["samples", "mask"]
    assert info["SetLatentNoiseMask"]["output"] == ["LATENT"]
    assert info["ImagePadForOutpaint"]["input_order"]["required"] == [
        "image", "left", "top", "right", "bottom", "feathering"]
    assert required["ImagePadForOutpaint"]["left"] == ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]
    assert required["ImagePadForOutpaint"]["feathering"] == ["INT", {"default": 40, "min": 0, "max": 16384,
                                                                     "step": 1}]
    assert info["ImagePadForOutpaint"]["output"] == ["IMAGE", "MASK"]
    assert info["SolidMask"]["input_order"]["required"] == ["value", "width", "height"]
    assert info["GrowMask"]["input_order"]["required"] == ["mask", "expand", "tapered_corners"]
    assert required["GrowMask"]["tapered_corners"] == ["BOOLEAN", {"default": True}]
    assert required["ImageToMask"]["channel"][0] == ["red", "green", "blue", "alpha"]
    assert info["ImageCompositeMasked"]["input_order"] == {
        "required": ["destination", "source", "x", "y", "resize_source"], "optional": ["mask"]}
    assert {info[name]["python_module"] for name in ("SolidMask", "InvertMask", "GrowMask", "MaskToImage",
                                                     "ImageToMask", "ImageCompositeMasked")} == {
        "comfy_extras.nodes_mask"}
