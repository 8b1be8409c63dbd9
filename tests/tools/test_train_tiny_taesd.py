"""tools/train_tiny_taesd.py: the training windows line latents up with their pixels, and a smoke run writes
files that Loom loads as a TAESD of the asked width."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.models.taesd_load import load_tiny_vae
from tests.nodes.sd_workflow import require_demo_model
from tools import train_tiny_taesd


def test_crop_windows_cover_the_same_region_of_latent_and_image() -> None:
    latents = torch.arange(8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8)
    images = latents.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # each cell -> an 8x8 block
    for seed in range(5):
        window_l, window_i = train_tiny_taesd.crop_pair(latents, images, 3, torch.Generator().manual_seed(seed))
        assert window_l.shape == (1, 1, 3, 3) and window_i.shape == (1, 1, 24, 24)
        assert torch.equal(window_i, window_l.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3))
        image_first, latent_first = train_tiny_taesd.crop_pair(images, latents, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(image_first, window_i) and torch.equal(latent_first, window_l)


@pytest.mark.slow
def test_smoke_run_writes_loadable_taesd_files(tmp_path: Path) -> None:
    require_demo_model()
    assert train_tiny_taesd.main(["--steps", "3", "--dataset-size", "16", "--batch", "4", "--width", "8",
                                  "--out-dir", str(tmp_path)]) == 0
    tiny = load_tiny_vae("taesd", tmp_path / "taesd_decoder.safetensors", tmp_path / "taesd_encoder.safetensors",
                         device=torch.device("cpu"), dtype=torch.float32)
    assert tiny.decoder is not None and tiny.decoder[1].out_channels == 8  # type: ignore[union-attr]
    with torch.no_grad():
        assert tiny.decode(torch.zeros(1, 4, 2, 3)).shape == (1, 3, 16, 24)
        assert tiny.encode(torch.zeros(1, 3, 16, 24)).shape == (1, 4, 2, 3)
