"""Inpainting and outpainting: the nodes' arithmetic, and whole workflows on the demo model and on a
9-channel tiny inpainting checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from engine.backend.pipeline import BLANK_INPAINT_LATENT
from engine.backend.unet import UNetModel
from engine.executor import Executor
from engine.sdk.imaging import prepare_inpaint_pixels
from nodes.conditioning import CLIPTextEncode
from nodes.inpaint import (
    ImagePadForOutpaint,
    InpaintModelConditioning,
    SetLatentNoiseMask,
    VAEEncodeForInpaint,
)
from nodes.model_loaders import CheckpointLoaderSimple
from nodes.sampling import KSampler
from nodes.vae import VAEEncode
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import (
    DEMO_MODELS,
    checkpoint_loader,
    colour_share,
    ksampler,
    make_executor,
    mask_image,
    node_context,
    require_demo_model,
    run_prompt,
    shape_image,
    text,
)

SD1_SCALE = 0.18215


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    require_demo_model()
    executor = make_executor(tmp_path_factory.mktemp("inpaint"), DEMO_MODELS)
    inputs = executor.folders.input_dir
    shape_image(inputs / "corner.png", background="blue", color="red", box=(38, 38, 57, 57))
    shape_image(inputs / "circle.png", background="blue", color="red", box=(8, 8, 28, 28))
    mask_image(inputs / "quarter.png", (32, 32, 64, 64))
    return executor


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("tiny-models")
    build_checkpoint(root / "checkpoints" / "tiny-inpaint.safetensors", "sd1", inpaint=True)
    return make_executor(tmp_path_factory.mktemp("tiny-inpaint"), root)


# --------------------------------------------------------------------------- node arithmetic


def test_vae_encode_for_inpaint_greys_the_mask_and_grows_the_noise_mask() -> None:
    pixels = torch.rand(2, 70, 67, 3)  # cropped (centred) to 64 x 64: rows 3..66, columns 1..64
    mask = torch.zeros(70, 67)
    mask[20:30, 10:12] = 1.0
    mask[50, 50] = 0.4  # rounds to 0: neither greyed nor in the noise mask
    grey, noise_mask = prepare_inpaint_pixels(pixels, mask, grow_mask_by=6)
    assert grey.shape == (2, 64, 64, 3) and noise_mask.shape == (1, 1, 64, 64)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[17:27, 9:11] = True  # the mask in cropped coordinates
    assert torch.equal(grey[:, inside], torch.full_like(grey[:, inside], 0.5))
    assert torch.equal(grey[:, ~inside], pixels[:, 3:67, 1:65][:, ~inside])
    # a 6 x 6 box: 2 pixels more above / left, 3 below / right (ComfyUI's conv with padding 3, cropped)
    expected = torch.zeros(64, 64)
    expected[17 - 2:27 + 3, 9 - 2:11 + 3] = 1.0
    assert torch.equal(noise_mask[0, 0], expected)
    _, unchanged = prepare_inpaint_pixels(pixels, mask, grow_mask_by=0)
    assert torch.equal(unchanged[0, 0], inside.float())


def test_vae_encode_for_inpaint_encodes_the_greyed_image(demo: Executor) -> None:
    ctx = node_context(demo)
    _, _, vae = CheckpointLoaderSimple().run(ctx, "tiny-shapes.safetensors")
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 32, 32)  # a half-resolution mask is resized to the image
    mask[:, 4:12, 4:12] = 1.0
    [latent] = VAEEncodeForInpaint().run(ctx, pixels, vae, mask, 4)
    grey = pixels.clone()
    grey[:, 8:24, 8:24] = 0.5
    [plain] = VAEEncode().run(ctx, grey, vae)
    torch.testing.assert_close(latent["samples"], plain["samples"])
    assert latent["noise_mask"].shape == (1, 1, 64, 64)
    # rounded mask: pixels 8..23; a 4 x 4 box (padding 2) grows it 1 up / left and 2 down / right
    assert latent["noise_mask"][0, 0, 7:26, 7:26].all() and latent["noise_mask"].sum() == 19 * 19


def test_set_latent_noise_mask_keeps_the_rest_of_the_latent() -> None:
    latent = {"samples": torch.randn(2, 4, 8, 8), "batch_index": [3, 4]}
    [masked] = SetLatentNoiseMask().run(None, latent, torch.ones(64, 64))  # type: ignore[arg-type]
    assert masked["noise_mask"].shape == (1, 1, 64, 64)
    assert masked["samples"] is latent["samples"] and masked["batch_index"] == [3, 4]
    assert "noise_mask" not in latent


def test_image_pad_for_outpaint_sizes_and_feathering() -> None:
    image = torch.rand(2, 40, 48, 3)
    padded, mask = ImagePadForOutpaint().run(None, image, 8, 0, 16, 24, 10)  # type: ignore[arg-type]
    assert padded.shape == (2, 64, 72, 3) and mask.shape == (1, 64, 72)
    assert torch.equal(padded[:, 0:40, 8:56], image)
    assert torch.equal(padded[:, :, :8], torch.full((2, 64, 8, 3), 0.5))
    assert torch.equal(padded[:, 40:], torch.full((2, 24, 72, 3), 0.5))
    assert (mask[0, :, :8] == 1).all() and (mask[0, :, 56:] == 1).all() and (mask[0, 40:] == 1).all()
    inner = mask[0, :40, 8:56]
    # distance to the nearest padded edge d (left: column j; right: 48 - j; bottom: 40 - i; top not padded)
    assert inner[5, 0] == 1.0  # d = 0 at the left edge: ((10 - 0) / 10)^2
    assert inner[5, 3] == pytest.approx(0.49)  # d = 3
    assert inner[5, 47] == pytest.approx(0.81)  # right: d = 48 - 47 = 1
    assert inner[39, 24] == pytest.approx(0.81)  # bottom: d = 40 - 39 = 1
    assert inner[0, 24] == 0.0 and inner[20, 24] == 0.0  # the top was not padded; the middle is far
    assert inner[5, 10] == 0.0 and inner[30, 24] == 0.0  # d = 10: no longer feathered
    _, unfeathered = ImagePadForOutpaint().run(None, image, 8, 0, 16, 24, 20)  # type: ignore[arg-type]
    assert unfeathered[0, :40, 8:56].sum() == 0  # 2 * feathering >= the image height: no feathering


# --------------------------------------------------------------------------- workflows on the demo model


def inpaint_graph(prompt: str, image: str, mask: str, *, seed: int = 1) -> dict[str, Any]:
    return {
        "ckpt": checkpoint_loader(), "pos": text(prompt), "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "mask": {"class_type": "LoadImageMask", "inputs": {"image": mask, "channel": "red"}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2]}},
        "roundtrip": {"class_type": "VAEDecode", "inputs": {"samples": ["enc", 0], "vae": ["ckpt", 2]}},
        "masked": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["enc", 0], "mask": ["mask", 0]}},
        "inpaint": ksampler(["masked", 0], seed=seed, steps=8),
        "free": ksampler(["enc", 0], seed=seed, steps=8),
        "inpainted": {"class_type": "VAEDecode", "inputs": {"samples": ["inpaint", 0], "vae": ["ckpt", 2]}},
        "unmasked": {"class_type": "VAEDecode", "inputs": {"samples": ["free", 0], "vae": ["ckpt", 2]}},
    }


def test_inpainting_changes_only_the_masked_region(demo: Executor) -> None:
    # The prompt asks for a shape at the top left; only the bottom-right quarter may change.
    graph = inpaint_graph("a white triangle on a blue background, top left, big", "corner.png", "quarter.png")
    out = run_prompt(demo, graph, latent=["inpaint", 0], latent_in=["enc", 0], image=["inpainted", 0],
                     image_in=["roundtrip", 0], mask=["mask", 0])
    latent, original = out["latent"]["samples"], out["latent_in"]["samples"]
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[4:, 4:] = False  # the mask at latent resolution
    torch.testing.assert_close(latent[..., keep], original[..., keep], rtol=0, atol=1e-4)
    assert (latent[..., ~keep] - original[..., ~keep]).abs().mean() > 0.1

    mask = out["mask"][0]
    near = F.max_pool2d(mask[None, None], kernel_size=17, stride=1, padding=8)[0, 0] > 0  # mask + 8 pixels
    inpainted, before = out["image"][0], out["image_in"][0]
    outside = (inpainted - before).abs()[~near]
    assert float(outside.max()) < 0.1 and float(outside.mean()) < 0.01
    assert float((inpainted - before).abs()[mask > 0.5].mean()) > 0.08  # the masked region was redrawn

    # Without the mask the same prompt and seed draw outside the quarter: the check above can fail.
    free = run_prompt(demo, graph, image=["unmasked", 0])["image"][0]
    assert float((free - before).abs()[~near].max()) > 0.3


def test_outpainting_fills_the_padding(demo: Executor) -> None:
    graph = {
        "ckpt": checkpoint_loader(), "pos": text("a red circle on a blue background, top left, small"),
        "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": "circle.png"}},
        "pad": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["load", 0], "left": 0, "top": 0,
                                                                "right": 32, "bottom": 0, "feathering": 8}},
        "enc": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["pad", 0], "vae": ["ckpt", 2],
                                                                "mask": ["pad", 1], "grow_mask_by": 8}},
        "sample": ksampler(["enc", 0], seed=1, steps=8),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    out = run_prompt(demo, graph, image=["decode", 0], image_in=["pad", 0], latent=["enc", 0])
    image, padded = out["image"][0], out["image_in"][0]
    assert image.shape == (64, 96, 3) and out["latent"]["noise_mask"].shape == (1, 1, 64, 96)
    assert torch.equal(padded[:, 64:], torch.full((64, 32, 3), 0.5))
    new = image[:, 68:]
    assert float((new - 0.5).abs().mean()) > 0.15  # no longer grey
    assert colour_share(new, "blue") > 0.6  # the background continues
    assert float((image[:, :48] - padded[:, :48]).abs().mean()) < 0.06  # the picture stays


# --------------------------------------------------------------------------- 9-channel inpainting models


@pytest.fixture
def unet_inputs() -> Iterator[list[torch.Tensor]]:
    """Every latent batch a UNetModel receives while the test runs."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, UNetModel):
            seen.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def test_inpainting_model_receives_mask_and_masked_image(tiny_inpaint: Executor,
                                                         unet_inputs: list[torch.Tensor]) -> None:
    ctx = node_context(tiny_inpaint)
    model, clip, vae = CheckpointLoaderSimple().run(ctx, "tiny-inpaint.safetensors")
    [positive] = CLIPTextEncode().run(ctx, "a red circle", clip)
    [negative] = CLIPTextEncode().run(ctx, "", clip)
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 24:56] = 1.0
    [latent] = VAEEncodeForInpaint().run(ctx, pixels, vae, mask, 0)
    [result] = KSampler().run(ctx, model, 3, 2, 4.0, "euler", "normal", positive, negative, latent, 1.0)

    assert len(unet_inputs) == 2 and all(x.shape == (2, 9, 8, 8) for x in unet_inputs)  # 2 steps, uncond + cond
    x = unet_inputs[0]
    latent_mask = torch.zeros(8, 8)
    latent_mask[2:5, 3:7] = 1.0  # bilinear 64 -> 8 samples pixel 8j + 3.5, then rounded
    assert torch.equal(x[:, 4], latent_mask.expand(2, 8, 8))
    torch.testing.assert_close(x[:, 5:], (latent["samples"] * SD1_SCALE).expand(2, -1, -1, -1))
    assert torch.equal(unet_inputs[1][:, 4:], x[:, 4:])  # the same every step
    kept = latent_mask == 0
    torch.testing.assert_close(result["samples"][..., kept], latent["samples"][..., kept], rtol=0, atol=1e-4)

    # Without a noise mask the whole image is generated: a mask of ones and the grey image's latent.
    unet_inputs.clear()
    KSampler().run(ctx, model, 3, 1, 4.0, "euler", "normal", positive, negative, {"samples": torch.zeros(1, 4, 8, 8)},
                   1.0)
    [x] = unet_inputs
    assert torch.equal(x[:, 4], torch.ones(2, 8, 8))
    blank = torch.tensor(BLANK_INPAINT_LATENT).reshape(1, 4, 1, 1).expand(2, 4, 8, 8)
    assert torch.equal(x[:, 5:], blank)


def test_inpainting_model_workflow(tiny_inpaint: Executor) -> None:
    shape_image(tiny_inpaint.folders.input_dir / "circle.png")
    mask_image(tiny_inpaint.folders.input_dir / "mask.png", (0, 0, 32, 64))
    graph = {
        "ckpt": checkpoint_loader("tiny-inpaint.safetensors"), "pos": text("a red circle"), "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": "circle.png"}},
        "mask": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}},
        "enc": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2],
                                                                "mask": ["mask", 0], "grow_mask_by": 6}},
        "sample": ksampler(["enc", 0], steps=2),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    out = run_prompt(tiny_inpaint, graph, image=["decode", 0], latent=["sample", 0], latent_in=["enc", 0])
    assert out["image"].shape == (1, 64, 64, 3) and torch.isfinite(out["image"]).all()
    samples, encoded = out["latent"]["samples"], out["latent_in"]["samples"]
    torch.testing.assert_close(samples[..., 5:], encoded[..., 5:], rtol=0, atol=1e-4)  # right of mask + 6 px
    assert not torch.allclose(samples[..., :4], encoded[..., :4])


def test_inpaint_model_conditioning_feeds_the_concat_from_the_conditioning(
        tiny_inpaint: Executor, unet_inputs: list[torch.Tensor]) -> None:
    ctx = node_context(tiny_inpaint)
    model, clip, vae = CheckpointLoaderSimple().run(ctx, "tiny-inpaint.safetensors")
    [positive] = CLIPTextEncode().run(ctx, "a red circle", clip)
    [negative] = CLIPTextEncode().run(ctx, "", clip)
    pixels = torch.rand(1, 68, 64, 3)  # cropped to rows 2..65
    mask = torch.zeros(1, 68, 64)
    mask[:, 2:34, :32] = 1.0  # the top-left quarter of the cropped image
    pos, neg, latent = InpaintModelConditioning().run(ctx, positive, negative, vae, pixels, mask, True)
    [plain] = VAEEncode().run(ctx, pixels, vae)
    torch.testing.assert_close(latent["samples"], plain["samples"])  # the whole image, not greyed
    assert latent["noise_mask"].shape == (1, 1, 64, 64) and latent["noise_mask"].sum() == 32 * 32
    grey = pixels[:, 2:66].clone()
    grey[:, :32, :32] = 0.5
    [greyed] = VAEEncode().run(ctx, grey, vae)
    for entries in (pos, neg):
        torch.testing.assert_close(entries[0][1]["concat_latent_image"], greyed["samples"])
        assert torch.equal(entries[0][1]["concat_mask"], latent["noise_mask"])
    assert "concat_mask" not in positive[0][1]  # inputs are not mutated

    for noise_mask in (True, False):
        unet_inputs.clear()
        pos, neg, latent = InpaintModelConditioning().run(ctx, positive, negative, vae, pixels, mask, noise_mask)
        assert ("noise_mask" in latent) is noise_mask
        [result] = KSampler().run(ctx, model, 3, 1, 4.0, "euler", "normal", pos, neg, latent, 1.0)
        [x] = unet_inputs
        expected_mask = torch.zeros(8, 8)
        expected_mask[:4, :4] = 1.0
        assert torch.equal(x[:, 4], expected_mask.expand(2, 8, 8))
        torch.testing.assert_close(x[:, 5:], (greyed["samples"] * SD1_SCALE).expand(2, -1, -1, -1))
        kept = (expected_mask == 0).expand(1, 4, 8, 8)
        if noise_mask:
            torch.testing.assert_close(result["samples"][kept], latent["samples"][kept], rtol=0, atol=1e-4)
        else:  # without a noise mask the whole latent is resampled
            assert not torch.allclose(result["samples"][kept], latent["samples"][kept], atol=1e-2)
