"""CLIPVisionLoader / CLIPVisionEncode / StyleModelLoader / StyleModelApply / unCLIPConditioning /
unCLIPCheckpointLoader on tiny files in the real key layouts, the SDXL and SD2 unCLIP adm vectors the
pipeline builds from unCLIP entries, and Revision- and unCLIP-shaped graphs through the executor."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional

from engine.backend.clip_vision import ClipVisionOutput, preprocess
from engine.backend.pipeline import adm_builder
from engine.backend.unclip import schedule
from engine.backend.unet import UNetModel
from engine.errors import LoomError
from engine.executor import Executor
from nodes.clip_vision import (
    CLIPVisionEncode,
    CLIPVisionLoader,
    StyleModelApply,
    StyleModelLoader,
    unCLIPCheckpointLoader,
    unCLIPConditioning,
)
from nodes.conditioning import CLIPTextEncode
from nodes.model_loaders import CheckpointLoaderSimple
from tests.fixtures.tiny_checkpoints import build_checkpoint, build_state_dict, pooled_dim, unet_config
from tests.fixtures.tiny_clip_vision import hf_state, openclip_state, save, style_adapter_state, tiny_vision_model
from tests.nodes.sd_workflow import make_executor, node_context, run_prompt

CHECKPOINT = "tiny-sdxl.safetensors"
PROJECTION = pooled_dim("sdxl")  # Revision needs image embeds as wide as SDXL's pooled vector


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_checkpoint(root / "checkpoints" / CHECKPOINT, "sdxl")
    tower = tiny_vision_model(projection_dim=PROJECTION, seed=5)
    save(hf_state(tower), root / "clip_vision" / "tiny_hf.safetensors")
    save(openclip_state(hf_state(tower)), root / "clip_vision" / "tiny_openclip.safetensors")
    save(style_adapter_state(), root / "style_models" / "tiny_style.safetensors")
    save({"weight": torch.zeros(2)}, root / "style_models" / "not_a_style.safetensors")
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, model_root)


def _image() -> Tensor:
    return torch.rand((2, 40, 50, 3), generator=torch.Generator().manual_seed(7))


def test_loader_and_encode_in_both_layouts(executor: Executor) -> None:
    ctx = node_context(executor)
    reference = tiny_vision_model(projection_dim=PROJECTION, seed=5)
    outputs = []
    for name in ("tiny_hf.safetensors", "tiny_openclip.safetensors"):
        (handle,) = CLIPVisionLoader().run(ctx, name)
        outputs.append(CLIPVisionEncode().run(ctx, handle, _image(), "center")[0])
    pixels = preprocess(_image(), size=32, crop=True)
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, output_hidden_states=True)
    for out in outputs:
        torch.testing.assert_close(out.image_embeds, theirs.image_embeds, rtol=0, atol=1e-4)
        torch.testing.assert_close(out["last_hidden_state"], theirs.last_hidden_state, rtol=0, atol=1e-4)
    (handle,) = CLIPVisionLoader().run(ctx, "tiny_hf.safetensors")
    squashed = CLIPVisionEncode().run(ctx, handle, _image(), "none")[0]
    assert not torch.allclose(squashed.image_embeds, outputs[0].image_embeds, atol=1e-3)


def _layer_norm(x: Tensor, state: dict[str, Tensor], name: str) -> Tensor:
    return functional.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)


def _style_formula(state: dict[str, Tensor], tokens: Tensor, heads: int = 8) -> Tensor:
    """The T2I-Adapter style model written out: learned tokens appended, ln_pre, CLIP blocks, ln_post, proj."""
    style = state["style_embedding"].expand(tokens.shape[0], -1, -1)
    x = _layer_norm(torch.cat([tokens, style], dim=1), state, "ln_pre")
    n, length, width = x.shape
    layers = len({k.split(".")[1] for k in state if k.startswith("transformer_layes.")})
    for i in range(layers):
        p = f"transformer_layes.{i}."
        h = _layer_norm(x, state, f"{p}ln_1")
        q, k, v = (h @ state[f"{p}attn.in_proj_weight"].t() + state[f"{p}attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
        attn = (weights @ v).transpose(1, 2).reshape(n, length, width)
        x = x + attn @ state[f"{p}attn.out_proj.weight"].t() + state[f"{p}attn.out_proj.bias"]
        m = _layer_norm(x, state, f"{p}ln_2") @ state[f"{p}mlp.c_fc.weight"].t() + state[f"{p}mlp.c_fc.bias"]
        m = m * torch.sigmoid(1.702 * m)
        x = x + m @ state[f"{p}mlp.c_proj.weight"].t() + state[f"{p}mlp.c_proj.bias"]
    tokens_out = state["style_embedding"].shape[1]
    return _layer_norm(x[:, -tokens_out:], state, "ln_post") @ state["proj"]


def test_style_model_appends_its_tokens(executor: Executor) -> None:
    ctx = node_context(executor)
    (vision,) = CLIPVisionLoader().run(ctx, "tiny_hf.safetensors")
    output = CLIPVisionEncode().run(ctx, vision, _image(), "center")[0]
    (style,) = StyleModelLoader().run(ctx, "tiny_style.safetensors")
    text = torch.randn((1, 5, 40))
    conditioning = [[text, {"pooled_output": torch.ones(1, 3)}]]
    (out,) = StyleModelApply().run(ctx, conditioning, style, output, 0.5, "multiply")
    expected = _style_formula(style_adapter_state(), output.last_hidden_state).flatten(0, 1)[None] * 0.5
    assert out[0][0].shape == (1, 5 + 2 * 4, 40)
    assert torch.equal(out[0][0][:, :5], text)
    torch.testing.assert_close(out[0][0][:, 5:], expected, rtol=0, atol=1e-4)
    assert out[0][1] == conditioning[0][1] and out[0][1] is not conditioning[0][1]
    (same,) = StyleModelApply().run(ctx, conditioning, style, output, 1.0, "attn_bias")
    torch.testing.assert_close(same[0][0][:, 5:], expected * 2, rtol=0, atol=1e-4)
    with pytest.raises(LoomError, match="attn_bias"):
        StyleModelApply().run(ctx, conditioning, style, output, 0.5, "attn_bias")
    with pytest.raises(LoomError, match="not a style model"):
        StyleModelLoader().run(ctx, "not_a_style.safetensors")


def test_unclip_changes_only_the_pooled_slots_of_the_sdxl_adm(executor: Executor) -> None:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, CHECKPOINT)
    (cond,) = CLIPTextEncode().run(ctx, "a red circle", clip)
    (vision,) = CLIPVisionLoader().run(ctx, "tiny_openclip.safetensors")
    output = CLIPVisionEncode().run(ctx, vision, _image()[:1], "center")[0]
    (revised,) = unCLIPConditioning().run(ctx, cond, output, 0.7, 0.0)
    assert "unclip_conditioning" not in cond[0][1]
    assert revised[0][1]["unclip_conditioning"][0]["strength"] == 0.7
    assert unCLIPConditioning().run(ctx, cond, output, 0.0, 0.0)[0] is cond
    build = adm_builder("sdxl", 123)
    assert build is not None
    plain, image = build(cond[0][1], 64, 64), build(revised[0][1], 64, 64)
    width = PROJECTION
    assert plain.shape == image.shape == (1, width + 6 * 256)
    assert torch.equal(plain[:, width:], image[:, width:])
    sqrt_acp, sqrt_one_minus = schedule()
    noise = torch.randn((1, width), generator=torch.Generator().manual_seed(123 - 10))
    expected = 0.7 * (sqrt_acp[0] * output.image_embeds + sqrt_one_minus[0] * noise)
    torch.testing.assert_close(image[:, :width], expected, rtol=0, atol=1e-5)
    assert torch.equal(image, build(revised[0][1], 64, 64))  # seeded: the same every time
    noisy = adm_builder("sdxl", 123)(unCLIPConditioning().run(ctx, cond, output, 0.7, 0.5)[0][0][1], 64, 64)
    assert (noisy[:, :width] - image[:, :width]).abs().max() > 0.1


def _revision_prompt(noise_augmentation: float) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_openclip.safetensors"}},
        "picture": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1,
                                                           "color": 0x3366CC}},
        "encode": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["vision", 0],
                                                                "image": ["picture", 0], "crop": "center"}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "unclip": {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": ["text", 0], "clip_vision_output": ["encode", 0], "strength": 1.0,
            "noise_augmentation": noise_augmentation}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["unclip", 0], "negative": ["text", 0],
            "latent_image": ["empty", 0]}},
    }


def test_revision_graph_runs_through_the_executor(executor: Executor) -> None:
    first = run_prompt(executor, _revision_prompt(0.0), latent=["sample", 0])["latent"]["samples"]
    again = run_prompt(executor, _revision_prompt(0.0), latent=["sample", 0])["latent"]["samples"]
    noisier = run_prompt(executor, _revision_prompt(0.9), latent=["sample", 0])["latent"]["samples"]
    assert torch.isfinite(first).all() and torch.equal(first, again)
    assert not torch.allclose(first, noisier)


# ------------------------------------------------------------------------------------------ SD2 unCLIP

UNCLIP_CHECKPOINT = "tiny-sd2-unclip.safetensors"
UNCLIP_EMBEDS = 48


@pytest.fixture(scope="module")
def unclip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD2.1 unCLIP checkpoint: the tiny SD2 checkpoint with an adm input (2 x 48) in its UNet and an
    OpenCLIP vision tower under ``embedder.model.visual.``."""
    root = tmp_path_factory.mktemp("unclip_models")
    state = {k: v for k, v in build_state_dict("sd2", dtype=torch.float32).items()
             if not k.startswith("model.diffusion_model.")}
    torch.manual_seed(11)
    unet = UNetModel(dataclasses.replace(unet_config("sd2"), adm_in_channels=2 * UNCLIP_EMBEDS))
    state |= {f"model.diffusion_model.{k}": v.detach().clone() for k, v in unet.state_dict().items()}
    tower = openclip_state(hf_state(tiny_vision_model(projection_dim=UNCLIP_EMBEDS, seed=9)))
    state |= {f"embedder.model.{k}": v for k, v in tower.items() if k.startswith("visual.")}
    state |= {"noise_augmentor.betas": torch.zeros(1000)}  # present in real files; unused (as in ComfyUI)
    save(state, root / "checkpoints" / UNCLIP_CHECKPOINT)
    return root


def test_unclip_checkpoint_loader_and_adm(unclip_root: Path, tmp_path: Path) -> None:
    executor = make_executor(tmp_path, unclip_root)
    ctx = node_context(executor)
    model, clip, _, vision = unCLIPCheckpointLoader().run(ctx, UNCLIP_CHECKPOINT)
    assert model.family.unclip and "unCLIP" in model.family.label and vision.prefix == "embedder.model.visual."
    output = CLIPVisionEncode().run(ctx, vision, _image()[:1], "center")[0]
    with torch.no_grad():
        theirs = tiny_vision_model(projection_dim=UNCLIP_EMBEDS, seed=9)(
            pixel_values=preprocess(_image()[:1], size=32), output_hidden_states=True)
    torch.testing.assert_close(output.image_embeds, theirs.image_embeds, rtol=0, atol=1e-4)
    (cond,) = CLIPTextEncode().run(ctx, "a red circle", clip)
    build = adm_builder("unclip", 77, 2 * UNCLIP_EMBEDS)
    assert build is not None
    assert torch.equal(build(cond[0][1], 64, 64), torch.zeros((1, 2 * UNCLIP_EMBEDS)))
    (revised,) = unCLIPConditioning().run(ctx, cond, output, 2.0, 0.25)
    adm = build(revised[0][1], 64, 64)
    sqrt_acp, sqrt_one_minus = schedule()
    level = round(999 * 0.25)
    noise = torch.randn((1, UNCLIP_EMBEDS), generator=torch.Generator().manual_seed(77 - 10))
    expected = 2.0 * (sqrt_acp[level] * output.image_embeds + sqrt_one_minus[level] * noise)
    torch.testing.assert_close(adm[:, :UNCLIP_EMBEDS], expected, rtol=0, atol=1e-5)
    half = torch.arange(UNCLIP_EMBEDS // 2) / (UNCLIP_EMBEDS // 2)
    args = level * torch.exp(-torch.log(torch.tensor(10000.0)) * half)
    torch.testing.assert_close(adm[0, UNCLIP_EMBEDS:], 2.0 * torch.cat([args.cos(), args.sin()]), rtol=0, atol=1e-4)


def _unclip_prompt(strength: float) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": UNCLIP_CHECKPOINT}},
        "picture": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 40, "batch_size": 1,
                                                           "color": 0xCC3366}},
        "encode": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["ckpt", 3],
                                                                "image": ["picture", 0], "crop": "none"}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a circle", "clip": ["ckpt", 1]}},
        "unclip": {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": ["text", 0], "clip_vision_output": ["encode", 0], "strength": strength,
            "noise_augmentation": 0.1}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 3, "steps": 1, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["unclip", 0], "negative": ["text", 0],
            "latent_image": ["empty", 0]}},
    }


def test_unclip_graph_runs_through_the_executor(unclip_root: Path, tmp_path: Path) -> None:
    executor = make_executor(tmp_path, unclip_root)
    with_image = run_prompt(executor, _unclip_prompt(1.0), latent=["sample", 0])["latent"]["samples"]
    without = run_prompt(executor, _unclip_prompt(0.0), latent=["sample", 0])["latent"]["samples"]
    assert torch.isfinite(with_image).all() and torch.isfinite(without).all()
    assert not torch.allclose(with_image, without)


def test_revision_with_a_tower_of_the_wrong_width_says_which_to_use(executor: Executor) -> None:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, CHECKPOINT)
    (cond,) = CLIPTextEncode().run(ctx, "a red circle", clip)
    narrow = ClipVisionOutput(torch.randn(1, PROJECTION - 16), torch.zeros(1, 5, 8), torch.zeros(1, 5, 8))
    (revised,) = unCLIPConditioning().run(ctx, cond, narrow, 1.0, 0.0)
    build = adm_builder("sdxl", 1)
    assert build is not None
    with pytest.raises(ValueError, match="clip_vision_g"):
        build(revised[0][1], 64, 64)
