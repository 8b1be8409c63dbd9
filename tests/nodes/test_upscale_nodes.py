"""UpscaleModelLoader and ImageUpscaleWithModel on tiny random ESRGANs written to a models root."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from engine.context import RunContext
from engine.errors import ModelError
from engine.events import ListSink, Progress
from engine.folders import Folders
from engine.models.handles import FileRef
from engine.models.manager import ModelManager
from engine.models.upscale import model_from_state_dict
from nodes.upscale_model import ImageUpscaleWithModel, UpscaleModelLoader
from tests.models.upscale_files import save_model, tiny_esrgan_state_dict


@pytest.fixture
def models_ctx(tmp_path: Path) -> RunContext:
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", (tmp_path / "models",))
    folders.ensure()
    return RunContext("7", "p", folders, ListSink(), threading.Event(), models=ModelManager("cpu"))


def _root(ctx: RunContext) -> Path:
    return ctx.folders.model_roots[0]


@pytest.mark.parametrize("name", ["tiny-2x.safetensors", "tiny-2x.pth"])
def test_upscale_equals_spandrels_forward(models_ctx: RunContext, name: str) -> None:
    state = tiny_esrgan_state_dict()
    save_model(state, _root(models_ctx) / "upscale_models" / name)
    assert models_ctx.folders.list_models("upscale_models") == [name]
    (handle,) = UpscaleModelLoader().run(models_ctx, model_name=name)
    assert isinstance(handle, FileRef) and handle.name == name
    image = torch.rand(2, 48, 40, 3)
    (upscaled,) = ImageUpscaleWithModel().run(models_ctx, upscale_model=handle, image=image)
    reference = model_from_state_dict(state, name)
    with torch.inference_mode():
        expected = torch.cat([reference(image[i:i + 1].movedim(-1, 1)) for i in range(2)]).movedim(1, -1)
    assert upscaled.shape == (2, 96, 80, 3)
    assert upscaled.min() >= 0 and upscaled.max() <= 1
    torch.testing.assert_close(upscaled, expected, atol=1e-5, rtol=0)


def test_progress_is_sent_per_tile(models_ctx: RunContext) -> None:
    save_model(tiny_esrgan_state_dict(nf=4), _root(models_ctx) / "ESRGAN" / "a1111.pth")  # A1111's folder
    (handle,) = UpscaleModelLoader().run(models_ctx, model_name="a1111.pth")
    (upscaled,) = ImageUpscaleWithModel().run(models_ctx, upscale_model=handle, image=torch.rand(1, 16, 600, 3))
    assert upscaled.shape == (1, 32, 1200, 3)
    sink = models_ctx.sink
    assert isinstance(sink, ListSink)
    progress = [(e.value, e.max) for e in sink.events if isinstance(e, Progress)]
    assert progress == [(1, 2), (2, 2)]  # 512px tiles overlapping by 32px: two along the width


@pytest.mark.parametrize(("content", "why"), [(b"not a model at all", "cannot be read"),
                                              (None, "no upscale architecture")])
def test_a_bad_file_names_the_node_and_the_input(models_ctx: RunContext, content: bytes | None, why: str) -> None:
    path = _root(models_ctx) / "upscale_models" / "bad.safetensors"
    if content is None:
        save_model({"some.weight": torch.zeros(4, 4)}, path)
    else:
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    with pytest.raises(ModelError, match=f"UpscaleModelLoader \\(node 7\\), input model_name: .*{why}"):
        UpscaleModelLoader().run(models_ctx, model_name="bad.safetensors")


def test_declared_where_comfyui_puts_them() -> None:
    assert (UpscaleModelLoader.category, UpscaleModelLoader.display_name) == ("loaders", "Load Upscale Model")
    assert (ImageUpscaleWithModel.category, ImageUpscaleWithModel.display_name) == (
        "image/upscaling", "Upscale Image (using Model)")
