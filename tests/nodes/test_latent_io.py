"""SaveLatent and LoadLatent against real .latent files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.context import RunContext
from nodes.latent_io import LoadLatent, SaveLatent


def _latent() -> torch.Tensor:
    return torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 4, 3, 5) / 7.0


def test_saved_latent_loads_back_exactly(ctx: RunContext) -> None:
    ctx.prompt = {"3": {"class_type": "SaveLatent", "inputs": {}}}
    ui = SaveLatent().run(ctx, samples={"samples": _latent()}, filename_prefix="latents/run").ui
    assert ui is not None
    entry = ui["latents"][0]
    assert entry == {"filename": "run_00001_.latent", "subfolder": "latents", "type": "output"}
    saved = ctx.folders.output_dir / "latents" / entry["filename"]
    with safe_open(str(saved), framework="pt") as handle:
        assert json.loads(handle.metadata()["prompt"]) == ctx.prompt
    shutil.copy(saved, ctx.folders.input_dir / "run.latent")
    (loaded,) = LoadLatent().run(ctx, latent="run.latent")
    torch.testing.assert_close(loaded["samples"], _latent(), rtol=0, atol=0)


def test_save_latent_counts_up(ctx: RunContext) -> None:
    for _ in range(2):
        SaveLatent().run(ctx, samples={"samples": _latent()}, filename_prefix="a")
    assert sorted(path.name for path in ctx.folders.output_dir.iterdir()) == ["a_00001_.latent", "a_00002_.latent"]


def test_legacy_latent_without_marker_is_unscaled(ctx: RunContext) -> None:
    save_file({"latent_tensor": _latent()}, str(ctx.folders.input_dir / "old.latent"))
    (loaded,) = LoadLatent().run(ctx, latent="old.latent")
    torch.testing.assert_close(loaded["samples"], _latent() / 0.18215)


def test_file_without_latent_tensor_is_refused(ctx: RunContext) -> None:
    save_file({"other": _latent()}, str(ctx.folders.input_dir / "other.latent"))
    with pytest.raises(ValueError, match="other.latent"):
        LoadLatent().run(ctx, latent="other.latent")


def test_missing_latent_names_the_file(ctx: RunContext) -> None:
    with pytest.raises(FileNotFoundError, match="nope.latent"):
        LoadLatent().run(ctx, latent="nope.latent")
