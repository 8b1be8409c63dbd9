"""txt2img of each rectified-flow family through the executor, on tiny models written to real files in the
layouts people download: an SD3 single-file checkpoint (MMDiT, 16-channel VAE, CLIP-L, CLIP-G and T5 under
``text_encoders.*``) loaded by CheckpointLoaderSimple, and Flux.1 dev as split files (UNETLoader, DualCLIPLoader
type flux, VAELoader), with ComfyUI's nodes for each (ModelSamplingSD3, ConditioningZeroOut negative,
SkipLayerGuidanceSD3; CLIPTextEncodeFlux, FluxGuidance, EmptySD3LatentImage).

The images come from random weights, so what is checked is that the graphs run end to end and that each
input reaches the model: the same seed repeats the image exactly, and a different prompt, guidance or skip-layer
setting changes it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.flux import Flux, FluxConfig
from engine.backend.mmdit import MMDiT, MMDiTConfig
from engine.backend.vae import AutoencoderKL, VAEConfig
from engine.executor import Executor
from tests.backend.flow_text_files import (
    CLIP_G_PROJECTION,
    CLIP_L_WIDTH,
    T5_WIDTH,
    place_tokenizer,
    reference_towers,
    train_spiece,
    write_checkpoint,
    write_parts,
)
from tests.nodes.sd_workflow import make_executor, run_prompt
from tests.support.weights import seeded_state

VAE16 = VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16, embed_dim=16, use_quant_conv=False)
SIZE = 64  # pixels: an 8x8 latent


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("flow-models")
    towers = reference_towers()
    spiece = train_spiece(root / "spiece")
    vae = seeded_state(AutoencoderKL(VAE16), 3)
    mmdit = MMDiT(MMDiTConfig(depth=3, hidden_size=64, num_heads=1, context_in_dim=T5_WIDTH,
                              pooled_dim=CLIP_L_WIDTH + CLIP_G_PROJECTION, pos_embed_max_size=8))
    sd3 = {f"model.diffusion_model.{key}": value for key, value in seeded_state(mmdit, 1).items()}
    sd3 |= {f"first_stage_model.{key}": value for key, value in vae.items()}
    write_checkpoint(root / "checkpoints" / "tiny-sd3.safetensors", towers, extra=sd3)
    place_tokenizer(spiece, root / "checkpoints")
    flux = Flux(FluxConfig(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(4, 14, 14),
                           context_in_dim=T5_WIDTH, vec_in_dim=CLIP_L_WIDTH))
    (root / "diffusion_models").mkdir()
    save_file(seeded_state(flux, 2), str(root / "diffusion_models" / "tiny-flux-dev.safetensors"))
    write_parts(root / "text_encoders", towers)
    place_tokenizer(spiece, root / "text_encoders")
    (root / "vae").mkdir()
    save_file(vae, str(root / "vae" / "tiny-ae.safetensors"))
    return make_executor(tmp_path_factory.mktemp("run"), root)


def _sd3_prompt(text: str, *, seed: int = 1, skip_scale: float = 0.0) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd3.safetensors"}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["ckpt", 0], "shift": 3.0}},
        "slg": {"class_type": "SkipLayerGuidanceSD3", "inputs": {
            "model": ["shift", 0], "layers": "1", "scale": skip_scale, "start_percent": 0.0, "end_percent": 1.0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["empty", 0]}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 4, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform",
            "denoise": 1.0, "model": ["slg", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "sd3"}},
    }


def _flux_prompt(text: str, *, guidance: float = 3.5, seed: int = 1) -> dict[str, Any]:
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors",
                                                        "weight_dtype": "default"}},
        "clip": {"class_type": "DualCLIPLoader", "inputs": {
            "clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_tiny.safetensors", "type": "flux"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-ae.safetensors"}},
        "sampling": {"class_type": "ModelSamplingFlux", "inputs": {
            "model": ["unet", 0], "max_shift": 1.15, "base_shift": 0.5, "width": SIZE, "height": SIZE}},
        "text": {"class_type": "CLIPTextEncodeFlux", "inputs": {
            "clip": ["clip", 0], "clip_l": text, "t5xxl": text, "guidance": 3.5}},
        "guidance": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["text", 0], "guidance": guidance}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["sampling", 0], "positive": ["guidance", 0], "negative": ["guidance", 0],
            "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "flux"}},
    }


def _image(executor: Executor, prompt: dict[str, Any]) -> torch.Tensor:
    captured = run_prompt(executor, prompt, image=["decode", 0], latent=["sample", 0])
    assert captured["latent"]["samples"].shape == (1, 16, SIZE // 8, SIZE // 8)
    image: torch.Tensor = captured["image"]
    assert image.shape == (1, SIZE, SIZE, 3) and bool(torch.isfinite(image).all())
    return image


def test_sd3_checkpoint_txt2img(executor: Executor) -> None:
    first = _image(executor, _sd3_prompt("a red cat sits on a blue mat"))
    assert any(executor.folders.output_dir.glob("sd3_*.png"))
    torch.testing.assert_close(_image(executor, _sd3_prompt("a red cat sits on a blue mat")), first, rtol=0, atol=0)
    assert (_image(executor, _sd3_prompt("a green dog runs in the park")) - first).abs().max() > 1e-4
    assert (_image(executor, _sd3_prompt("a red cat sits on a blue mat", skip_scale=3.0)) - first).abs().max() > 1e-4


def test_flux_split_files_txt2img(executor: Executor) -> None:
    first = _image(executor, _flux_prompt("a red cat sits on a blue mat"))
    assert any(executor.folders.output_dir.glob("flux_*.png"))
    torch.testing.assert_close(_image(executor, _flux_prompt("a red cat sits on a blue mat")), first, rtol=0, atol=0)
    assert (_image(executor, _flux_prompt("a green dog runs in the park")) - first).abs().max() > 1e-4
    assert (_image(executor, _flux_prompt("a red cat sits on a blue mat", guidance=1.0)) - first).abs().max() > 1e-4
