"""Flux Redux through the executor on tiny real files: CLIPVisionLoader on a SigLIP tower in the released key
layout, CLIPVisionEncode (SigLIP's preprocessing), StyleModelLoader on a Redux file and StyleModelApply on a
CLIPTextEncodeFlux conditioning append exactly ``redux(last_hidden_state) x strength`` to the T5 context; a tiny
Flux samples with it; wrong files and wrong towers are refused naming the node and the input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor
from torch.nn import functional

from engine.backend.clip_vision import SIGLIP_MEAN, SIGLIP_STD, ClipVisionOutput, preprocess
from engine.backend.flux import Flux, FluxConfig
from engine.errors import ModelError
from engine.executor import Executor
from nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader, StyleModelApply, StyleModelLoader, unCLIPConditioning
from tests.backend.flow_text_files import (
    CLIP_L_WIDTH,
    T5_WIDTH,
    place_tokenizer,
    reference_towers,
    train_spiece,
    write_parts,
)
from tests.fixtures.tiny_clip_vision import hf_state, save, tiny_vision_model
from tests.fixtures.tiny_siglip import IMAGE, TOKENS, WIDTH, redux_state, siglip_file_state, tiny_siglip
from tests.nodes.sd_workflow import make_executor, node_context, run_prompt, shape_image
from tests.support.weights import seeded_state

SIGLIP = "tiny_sigclip_vision.safetensors"
REDUX = "tiny_flux_redux.safetensors"
PICTURE = "redux.png"
SIZE = 64  # pixels: an 8x8 Flux latent


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("redux-models")
    save(siglip_file_state(tiny_siglip(seed=3)), root / "clip_vision" / SIGLIP)
    save(hf_state(tiny_vision_model(projection_dim=48, seed=5)), root / "clip_vision" / "tiny_clip_l.safetensors")
    save({"model.diffusion_model.x": torch.zeros(2)}, root / "clip_vision" / "not_vision.safetensors")
    save(redux_state(WIDTH, T5_WIDTH), root / "style_models" / REDUX)
    save(siglip_file_state(tiny_siglip(seed=3)), root / "style_models" / "a_vision_tower.safetensors")
    write_parts(root / "text_encoders", reference_towers())
    place_tokenizer(train_spiece(root / "spiece"), root / "text_encoders")
    flux = Flux(FluxConfig(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(4, 14, 14),
                           context_in_dim=T5_WIDTH, vec_in_dim=CLIP_L_WIDTH))
    (root / "diffusion_models").mkdir()
    save_file(seeded_state(flux, 2), str(root / "diffusion_models" / "tiny-flux-dev.safetensors"))
    executor = make_executor(tmp_path_factory.mktemp("run"), root)
    shape_image(executor.folders.input_dir / PICTURE, background="blue", color="red", box=(6, 10, 30, 40), size=48)
    return executor


def _prompt(strength: float, strength_type: str = "multiply", crop: str = "center") -> dict[str, Any]:
    return {
        "clip": {"class_type": "DualCLIPLoader", "inputs": {
            "clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_tiny.safetensors", "type": "flux"}},
        "text": {"class_type": "CLIPTextEncodeFlux", "inputs": {
            "clip": ["clip", 0], "clip_l": "a red cat", "t5xxl": "a red cat", "guidance": 3.5}},
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": SIGLIP}},
        "picture": {"class_type": "LoadImage", "inputs": {"image": PICTURE}},
        "encode": {"class_type": "CLIPVisionEncode", "inputs": {
            "clip_vision": ["vision", 0], "image": ["picture", 0], "crop": crop}},
        "style": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": REDUX}},
        "redux": {"class_type": "StyleModelApply", "inputs": {
            "conditioning": ["text", 0], "style_model": ["style", 0], "clip_vision_output": ["encode", 0],
            "strength": strength, "strength_type": strength_type}},
    }


def _expected_tokens(executor: Executor, crop: bool) -> Tensor:
    """redux(last_hidden_state) written out: the picture through transformers' SigLIP, then the two layers."""
    pixels = np.asarray(Image.open(executor.folders.input_dir / PICTURE).convert("RGB"), dtype=np.float32) / 255
    image = torch.from_numpy(pixels)[None]
    with torch.no_grad():
        hidden = tiny_siglip(seed=3)(pixel_values=preprocess(image, size=IMAGE, crop=crop, mean=SIGLIP_MEAN,
                                                             std=SIGLIP_STD)).last_hidden_state
    redux = redux_state(WIDTH, T5_WIDTH)
    up = functional.silu(hidden @ redux["redux_up.weight"].T + redux["redux_up.bias"])
    return up @ redux["redux_down.weight"].T + redux["redux_down.bias"]


def test_redux_appends_its_tokens_to_the_flux_conditioning(executor: Executor) -> None:
    [[text, text_extras]] = run_prompt(executor, _prompt(0.6), cond=["text", 0])["cond"]
    [[joined, extras]] = run_prompt(executor, _prompt(0.6), cond=["redux", 0])["cond"]
    words = text.shape[1]
    assert joined.shape == (1, words + TOKENS, T5_WIDTH)
    assert torch.equal(joined[:, :words], text)
    assert extras.keys() == text_extras.keys() and extras["guidance"] == 3.5
    torch.testing.assert_close(joined[:, words:], _expected_tokens(executor, crop=True) * 0.6, rtol=1e-5, atol=1e-5)
    [[full, _]] = run_prompt(executor, _prompt(1.0, "attn_bias", crop="none"), cond=["redux", 0])["cond"]
    torch.testing.assert_close(full[:, words:], _expected_tokens(executor, crop=False), rtol=1e-5, atol=1e-5)


def test_a_flux_model_samples_with_the_redux_conditioning(executor: Executor) -> None:
    def sampled(positive: str) -> Tensor:
        prompt = _prompt(1.0) | {
            "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors",
                                                            "weight_dtype": "default"}},
            "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE,
                                                                       "batch_size": 1}},
            "sample": {"class_type": "KSampler", "inputs": {
                "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                "model": ["unet", 0], "positive": [positive, 0], "negative": ["text", 0],
                "latent_image": ["latent", 0]}}}
        samples: Tensor = run_prompt(executor, prompt, latent=["sample", 0])["latent"]["samples"]
        return samples

    with_image, without = sampled("redux"), sampled("text")
    assert with_image.shape == (1, 16, SIZE // 8, SIZE // 8) and bool(torch.isfinite(with_image).all())
    assert (with_image - without).abs().max() > 1e-4


def test_wrong_files_and_towers_are_refused_naming_node_and_input(executor: Executor) -> None:
    ctx = node_context(executor)
    with pytest.raises(ModelError, match=r"CLIPVisionLoader \(node n\), input clip_name: .*not a CLIP vision model"):
        CLIPVisionLoader().run(ctx, "not_vision.safetensors")
    with pytest.raises(ModelError, match=r"StyleModelLoader \(node n\), input style_model_name: .*not a style"):
        StyleModelLoader().run(ctx, "a_vision_tower.safetensors")
    (redux,) = StyleModelLoader().run(ctx, REDUX)
    (clip_l,) = CLIPVisionLoader().run(ctx, "tiny_clip_l.safetensors")
    image = torch.rand((1, 40, 40, 3), generator=torch.Generator().manual_seed(2))
    clip_output = CLIPVisionEncode().run(ctx, clip_l, image, "center")[0]
    cond = [[torch.zeros((1, 4, T5_WIDTH)), {}]]
    with pytest.raises(ModelError, match=r"input clip_vision_output: tokens of width 64, .* takes width 128; "
                                         r"encode the image with SigLIP .*sigclip_vision_patch14_384"):
        StyleModelApply().run(ctx, cond, redux, clip_output, 1.0, "multiply")
    with pytest.raises(ModelError, match="attn_bias"):
        StyleModelApply().run(ctx, cond, redux, clip_output, 0.5, "attn_bias")
    (siglip,) = CLIPVisionLoader().run(ctx, SIGLIP)
    siglip_output: ClipVisionOutput = CLIPVisionEncode().run(ctx, siglip, image, "center")[0]
    assert siglip_output.image_embeds.shape == (1, TOKENS, WIDTH)
    with pytest.raises(ModelError, match=r"unCLIPConditioning \(node n\), input clip_vision_output: .*SigLIP"):
        unCLIPConditioning().run(ctx, cond, siglip_output, 1.0, 0.0)


def test_the_loader_names_the_tower(executor: Executor) -> None:
    """The handle names the tower it loaded (what CLIPVisionLoader logs)."""
    (handle,) = CLIPVisionLoader().run(node_context(executor), SIGLIP)
    assert handle.label == f"SigLIP vision (2 layers, width {WIDTH}, {IMAGE}px, {TOKENS} tokens)"
