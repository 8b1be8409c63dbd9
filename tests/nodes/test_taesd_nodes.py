"""VAELoader's taesd / taesdxl choices (listed when both halves are in models/vae_approx) and the shipped
distilled TAESD of the demo model: it decodes and encodes close to the demo model's full VAE; TAESD
previews of a KSampler run reach the event sink as JPEGs of the image's size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.backend.taesd import build_decoder, build_encoder
from engine.events import PreviewImage
from nodes.model_loaders import VAELoader, _vaes
from nodes.vae import VAEDecode, VAEDecodeTiled, VAEEncode
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    make_executor,
    node_context,
    require_demo_model,
    run_prompt,
)
from tools.tiny_shapes_data import make_dataset

SHIPPED = DEMO_MODELS / "vae_approx"


def _write_half(folder: Path, name: str, part: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    module = build_decoder(8) if part == "decoder" else build_encoder(8)
    save_file(module.state_dict(), str(folder / f"{name}_{part}.safetensors"))


def test_vae_loader_lists_taesd_only_with_both_halves(tmp_path: Path) -> None:
    executor = make_executor(tmp_path, tmp_path / "models")
    approx = tmp_path / "models" / "vae_approx"
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / "a.safetensors").write_bytes(b"")
    _write_half(approx, "taesd", "decoder")
    _write_half(approx, "taesdxl", "decoder")
    assert _vaes(executor.folders) == ["a.safetensors"]
    _write_half(approx, "taesdxl", "encoder")
    assert _vaes(executor.folders) == ["a.safetensors", "taesdxl"]
    [handle] = VAELoader().run(node_context(executor), "taesdxl")
    assert handle.tiny == "taesdxl" and handle.encoder is not None
    assert Path(handle.file.path).name == "taesdxl_decoder.safetensors"
    assert VAELoader.fingerprint(executor.folders, {"vae_name": "taesdxl"}) is not None


def _demo_images() -> torch.Tensor:
    images, _ = make_dataset(4, seed=123)
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0


def test_shipped_taesd_decodes_close_to_the_full_vae(tmp_path: Path) -> None:
    """Loose tolerance: the 16-wide distilled TAESD is an approximation. Mean |difference| from the full VAE's
    decode below 0.05 of the 0..1 range (0.019 measured), and TAESD's encoder then the full VAE's decoder
    give the image back within 0.03 (0.0095 measured; the full VAE alone: 0.0076)."""
    require_demo_model()
    if not (SHIPPED / "taesd_decoder.safetensors").is_file():
        pytest.skip("models/vae_approx/taesd_decoder.safetensors is missing (python -m tools.train_tiny_taesd)")
    from nodes.model_loaders import CheckpointLoaderSimple

    executor = make_executor(tmp_path, DEMO_MODELS)
    ctx = node_context(executor)
    assert "taesd" in _vaes(executor.folders)
    _, _, full_vae = CheckpointLoaderSimple().run(ctx, DEMO_CHECKPOINT)
    [tiny_vae] = VAELoader().run(ctx, "taesd")
    pixels = _demo_images()
    [latent] = VAEEncode().run(ctx, pixels, full_vae)
    [full] = VAEDecode().run(ctx, latent, full_vae)
    [tiny] = VAEDecode().run(ctx, latent, tiny_vae)
    assert tiny.shape == full.shape == (4, 64, 64, 3)
    assert float((tiny - full).abs().mean()) < 0.05
    [tiled] = VAEDecodeTiled().run(ctx, latent, tiny_vae, 512, 64)
    torch.testing.assert_close(tiled, tiny)
    [tiny_latent] = VAEEncode().run(ctx, pixels, tiny_vae)
    assert tiny_latent["samples"].shape == latent["samples"].shape
    [round_trip] = VAEDecode().run(ctx, tiny_latent, full_vae)
    assert float((round_trip - pixels).abs().mean()) < 0.03


def test_taesd_previews_of_a_ksampler_run(tmp_path: Path) -> None:
    require_demo_model()
    if not (SHIPPED / "taesd_decoder.safetensors").is_file():
        pytest.skip("models/vae_approx/taesd_decoder.safetensors is missing (python -m tools.train_tiny_taesd)")
    executor = make_executor(tmp_path, DEMO_MODELS)
    executor.previews, executor.preview_method = True, "taesd"
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
    }
    events = run_prompt(executor, prompt, latent=["ks", 0])["events"]
    previews = [e for e in events if isinstance(e, PreviewImage)]
    assert len(previews) == 3
    for preview in previews:
        image = Image.open(io.BytesIO(preview.data))
        assert preview.image_format == "JPEG" and image.format == "JPEG" and image.size == (64, 48)
    loaded = [m["part"] for m in executor.models.stats()["models"]]  # type: ignore[attr-defined]
    assert sum(part.startswith("taesd:") for part in loaded) == 1  # loaded once, not per step
