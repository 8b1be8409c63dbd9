"""InstructPixToPixConditioning and SD_4XUpscale_Conditioning: node outputs against formulas computed here; an
InstructPix2Pix checkpoint (the demo model with conv_in widened to 8 input channels) recognised and sampled
with the image latent as extra UNet channels, through the executor; an SD x4 upscaler checkpoint in the real
layout recognised and run through SD_4XUpscale_Conditioning, KSampler and its 4x VAE (its numerics against
diffusers are in tests/backend/test_x4_upscaler.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.backend.resample import resize
from engine.backend.unet import UNetModel
from engine.backend.x4_upscaler import augmentation_schedule
from engine.executor import Executor
from engine.models.loaders import UNET_PREFIX, CheckpointFile, detect_family
from nodes.conditioning import CLIPTextEncode
from nodes.image_conditioning import InstructPixToPixConditioning, SD_4XUpscale_Conditioning
from nodes.model_loaders import CheckpointLoaderSimple
from nodes.sampling import KSampler
from nodes.vae import VAEEncode
from tests.fixtures.tiny_checkpoints import build_x4_upscaler_checkpoint
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    make_executor,
    node_context,
    require_demo_model,
    run_prompt,
    shape_image,
    text,
)

SD1_SCALE = 0.18215
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"


def _write_ip2p(root: Path, name: str, extra_scale: float) -> Path:
    """The demo checkpoint with conv_in taking 4 more (image latent) channels, weighted ``extra_scale``."""
    state = load_file(str(DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT))
    conv = state[CONV_IN]
    generator = torch.Generator().manual_seed(0)
    extra = torch.randn(conv.shape, generator=generator).to(conv.dtype) * extra_scale
    state[CONV_IN] = torch.cat([conv, extra], dim=1).contiguous()
    path = root / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def ip2p_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_demo_model()
    root = tmp_path_factory.mktemp("ip2p-models")
    _write_ip2p(root, "tiny-ip2p.safetensors", 0.3)
    _write_ip2p(root, "tiny-ip2p-blind.safetensors", 0.0)
    return root


@pytest.fixture
def executor(ip2p_root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, DEMO_MODELS, ip2p_root)


@pytest.fixture
def unet_inputs() -> Iterator[list[torch.Tensor]]:
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, UNetModel):
            seen.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def test_ip2p_checkpoint_is_recognised(ip2p_root: Path) -> None:
    with CheckpointFile(ip2p_root / "checkpoints" / "tiny-ip2p.safetensors") as ckpt:
        family = detect_family(ckpt)
    assert family.in_channels == 8 and family.is_ip2p and not family.is_inpaint
    assert family.label == "SD1.x InstructPix2Pix"


def test_ip2p_conditioning_crops_to_multiples_of_8_and_encodes(executor: Executor) -> None:
    ctx = node_context(executor)
    _, clip, vae = CheckpointLoaderSimple().run(ctx, DEMO_CHECKPOINT)
    [positive] = CLIPTextEncode().run(ctx, "a red circle", clip)
    [negative] = CLIPTextEncode().run(ctx, "", clip)
    pixels = torch.rand(1, 70, 67, 3, generator=torch.Generator().manual_seed(1))
    pos, neg, latent = InstructPixToPixConditioning().run(ctx, positive, negative, vae, pixels)

    [expected] = VAEEncode().run(ctx, pixels[:, 3:67, 1:65, :], vae)  # offsets (70 % 8) // 2, (67 % 8) // 2
    assert expected["samples"].shape == (1, 4, 8, 8)
    for out, source in ((pos, positive), (neg, negative)):
        assert len(out) == len(source) and out[0][0] is source[0][0]
        torch.testing.assert_close(out[0][1]["concat_latent_image"], expected["samples"])
        assert out[0][1]["pooled_output"] is source[0][1]["pooled_output"]
    assert "concat_latent_image" not in positive[0][1]  # inputs untouched
    assert torch.equal(latent["samples"], torch.zeros(1, 4, 8, 8))


def test_ip2p_unet_receives_the_image_latent_in_cond_and_uncond(executor: Executor,
                                                                unet_inputs: list[torch.Tensor]) -> None:
    ctx = node_context(executor)
    model, clip, vae = CheckpointLoaderSimple().run(ctx, "tiny-ip2p.safetensors")
    [positive] = CLIPTextEncode().run(ctx, "a red circle", clip)
    [negative] = CLIPTextEncode().run(ctx, "", clip)
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    pos, neg, latent = InstructPixToPixConditioning().run(ctx, positive, negative, vae, pixels)
    KSampler().run(ctx, model, 3, 2, 4.0, "euler", "normal", pos, neg, latent, 1.0)

    assert len(unet_inputs) == 2 and all(x.shape == (2, 8, 8, 8) for x in unet_inputs)  # 2 steps, uncond + cond
    image = (pos[0][1]["concat_latent_image"] * SD1_SCALE).expand(2, -1, -1, -1)
    for x in unet_inputs:
        torch.testing.assert_close(x[:, 4:], image)


def _ip2p_prompt(checkpoint: str, image: str) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": text("a red circle"), "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "ip2p": {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2], "pixels": ["load", 0]}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["ip2p", 0], "negative": ["ip2p", 1], "latent_image": ["ip2p", 2]}},
    }


def _sampled(executor: Executor, checkpoint: str, image: str) -> torch.Tensor:
    out = run_prompt(executor, _ip2p_prompt(checkpoint, image), latent=["sample", 0])
    samples: torch.Tensor = out["latent"]["samples"]
    return samples


def test_ip2p_ksampler_run_depends_on_the_input_image(executor: Executor) -> None:
    input_dir = executor.folders.input_dir
    shape_image(input_dir / "red.png", color="red")
    shape_image(input_dir / "green.png", color="green", box=(30, 30, 60, 60), ellipse=False)
    red = _sampled(executor, "tiny-ip2p.safetensors", "red.png")
    green = _sampled(executor, "tiny-ip2p.safetensors", "green.png")
    assert red.shape == (1, 4, 8, 8)
    assert float((red - green).abs().mean()) > 1e-3  # the image channels steer the UNet
    # With zero weights on the image channels the model is the demo model: the same latent as plain txt2img.
    blind = _sampled(executor, "tiny-ip2p-blind.safetensors", "red.png")
    plain = run_prompt(executor, {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
        "pos": text("a red circle"), "neg": text(""),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
    }, latent=["sample", 0])["latent"]["samples"]
    torch.testing.assert_close(blind, plain, rtol=1e-4, atol=1e-4)


def test_sd_4x_upscale_conditioning_matches_the_formula() -> None:
    images = torch.rand(2, 30, 41, 3, generator=torch.Generator().manual_seed(3))
    positive = [[torch.ones(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    negative = [[torch.zeros(1, 77, 8), {}]]
    pos, neg, latent = SD_4XUpscale_Conditioning().run(None, images, positive, negative,  # type: ignore[arg-type]
                                                       3.0, 0.25)
    width, height = round(41 * 3.0), round(30 * 3.0)  # 123 x 90
    expected = resize(images.movedim(-1, 1) * 2.0 - 1.0, width // 4, height // 4, "bilinear", "center")
    assert expected.shape == (2, 3, 22, 30)
    for out in (pos, neg):
        torch.testing.assert_close(out[0][1]["concat_image"], expected)
        assert out[0][1]["noise_augmentation"] == 0.25
    assert pos[0][1]["pooled_output"] is positive[0][1]["pooled_output"] and "concat_image" not in positive[0][1]
    assert torch.equal(latent["samples"], torch.zeros(2, 4, 22, 30))
    assert float(pos[0][1]["concat_image"].min()) >= -1.0 and float(pos[0][1]["concat_image"].max()) <= 1.0


@pytest.fixture(scope="module")
def x4_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("x4-models")
    build_x4_upscaler_checkpoint(root / "checkpoints" / "x4-upscaler-ema.safetensors")
    return root


def test_sd_x4_upscaler_is_recognised(x4_root: Path) -> None:
    with CheckpointFile(x4_root / "checkpoints" / "x4-upscaler-ema.safetensors") as ckpt:
        family = detect_family(ckpt)
    assert family.is_x4_upscaler and family.prediction == "v" and family.name == "sd2"
    assert family.label == "SD x4 upscaler (v-prediction)"
    assert family.latent_scale_factor == 0.08333


def _x4_prompt(augmentation: float) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x4-upscaler-ema.safetensors"}},
        "pos": text("a red circle"), "neg": text(""),
        "load": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
        "cond": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
            "images": ["load", 0], "positive": ["pos", 0], "negative": ["neg", 0], "scale_ratio": 4.0,
            "noise_augmentation": augmentation}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }


def test_sd_x4_upscaler_workflow_upscales_by_4_with_the_low_res_image_in_the_unet(
        x4_root: Path, tmp_path: Path, unet_inputs: list[torch.Tensor]) -> None:
    """CheckpointLoaderSimple -> SD_4XUpscale_Conditioning -> KSampler -> VAEDecode on a checkpoint file in the
    real x4 layout: a 16 x 20 image comes back 64 x 80; every UNet call gets the noised low-res image as
    channels 4-6 of uncond and cond (ComfyUI's seeding: seed - 10, level round(350 * 0.2) = 70)."""
    executor = make_executor(tmp_path, x4_root)
    image = shape_image(executor.folders.input_dir / "small.png", size=20)
    Image.open(image).crop((0, 2, 20, 18)).save(image)  # 20 wide, 16 high
    out = run_prompt(executor, _x4_prompt(0.2), image=["decode", 0], latent=["sample", 0])
    assert out["image"].shape == (1, 64, 80, 3)
    assert out["latent"]["samples"].shape == (1, 4, 16, 20)
    assert len(unet_inputs) == 2 and all(x.shape == (2, 7, 16, 20) for x in unet_inputs)
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0)[None]
    low_res = resize(pixels.movedim(-1, 1) * 2.0 - 1.0, 20, 16, "bilinear", "center")
    noise = torch.randn(low_res.shape, generator=torch.Generator().manual_seed(7 - 10))
    sqrt_acp, sqrt_one_minus = augmentation_schedule()
    expected = sqrt_acp[70] * low_res + sqrt_one_minus[70] * noise
    for x in unet_inputs:
        torch.testing.assert_close(x[:, 4:], expected.expand(2, -1, -1, -1), rtol=1e-3, atol=1e-3)
    plain = run_prompt(executor, _x4_prompt(0.0), latent=["sample", 0])["latent"]["samples"]
    assert float((plain - out["latent"]["samples"]).abs().mean()) > 1e-4  # the augmentation takes part
