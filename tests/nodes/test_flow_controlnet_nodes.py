"""ControlNetLoader and ControlNetApplyAdvanced with SD3 / Flux ControlNet files: the loader accepts them (they
were refused before), and the apply node's ``vae`` becomes the spec's hint encoder, which encodes exactly as
VAEEncode does."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.context import RunContext
from engine.events import ListSink
from engine.folders import Folders
from engine.models.handles import ControlNetHandle, FileRef, VaeHandle
from engine.models.manager import ModelManager
from nodes.controlnet import ControlNetApplyAdvanced, ControlNetLoader
from nodes.vae import VAEEncode
from tests.backend.flow_controlnet_files import flux_controlnet, sd3_controlnet, write_diffusers
from tests.fixtures.tiny_checkpoints import build_vae_file


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "controlnet").mkdir()
    write_diffusers(sd3_controlnet(seed=1), root / "controlnet" / "sd3-canny.safetensors")
    write_diffusers(flux_controlnet(seed=2, num_mode=3), root / "controlnet" / "flux-union.safetensors")
    build_vae_file(root / "vae" / "tiny-vae.safetensors", dtype=torch.float32)
    return root


@pytest.fixture
def run_ctx(model_root: Path, tmp_path: Path) -> RunContext:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (model_root,))
    folders.ensure()
    return RunContext("7", "p", folders, ListSink(), threading.Event(), models=ModelManager("cpu"))


@pytest.mark.parametrize("name", ["sd3-canny.safetensors", "flux-union.safetensors"])
def test_loader_accepts_sd3_and_flux_controlnets(run_ctx: RunContext, name: str, caplog: Any) -> None:
    caplog.set_level("INFO")
    (handle,) = ControlNetLoader().run(run_ctx, name)
    assert isinstance(handle, ControlNetHandle) and handle.file.name == name
    expected = "an SD3 ControlNet" if name.startswith("sd3") else "an InstantX union Flux ControlNet"
    assert any(expected in record.getMessage() for record in caplog.records)


def test_apply_advanced_keeps_the_vae_as_the_hint_encoder(run_ctx: RunContext, model_root: Path) -> None:
    (handle,) = ControlNetLoader().run(run_ctx, "sd3-canny.safetensors")
    vae = VaeHandle(FileRef.of(model_root / "vae" / "tiny-vae.safetensors"), prefix="")
    image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    conditioning = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 48)}]]
    positive, negative = ControlNetApplyAdvanced().run(run_ctx, conditioning, conditioning, handle, image, 0.6, 0.1,
                                                       0.9, vae=vae)
    spec = positive[0][1]["control"]
    assert spec is negative[0][1]["control"]  # one spec: the net runs once per step for both prompts
    assert (spec.strength, spec.start_percent, spec.end_percent) == (0.6, 0.1, 0.9)
    latent = spec.vae(image.movedim(-1, 1))
    (encoded,) = VAEEncode().run(run_ctx, image, vae)
    torch.testing.assert_close(latent.cpu(), encoded["samples"], rtol=0, atol=1e-6)
    plain, _ = ControlNetApplyAdvanced().run(run_ctx, conditioning, conditioning, handle, image, 0.6, 0.0, 1.0)
    assert plain[0][1]["control"].vae is None
