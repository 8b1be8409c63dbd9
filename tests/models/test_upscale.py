"""Upscale models through spandrel (engine/models/upscale.py) and the tiling (engine/backend/tiled_upscale.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.tiled_upscale import (
    TileOutOfMemory,
    tile_count,
    tile_starts,
    upscale_tiled,
    upscale_tiled_shrinking,
)
from engine.errors import ModelError
from engine.models.handles import FileRef
from engine.models.upscale import UpscaleModelError, load_upscale_model, model_from_state_dict, read_state_dict
from tests.models.upscale_files import save_model, tiny_esrgan_state_dict, to_new_layout

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_module_imports_no_spandrel_until_asked() -> None:
    result = _python("import sys, engine.models.upscale; print('spandrel' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_spandrel_imports_without_leaving_a_torchvision_stand_in() -> None:
    code = (
        "import importlib.util, sys\n"
        "from engine.models.upscale import import_spandrel\n"
        "real = importlib.util.find_spec('torchvision') is not None\n"
        "spandrel = import_spandrel()\n"
        "assert 'ESRGAN' in [a.architecture.name for a in spandrel.MAIN_REGISTRY.architectures()]\n"
        "left = [m for m in sys.modules if m.split('.')[0] == 'torchvision']\n"
        "assert real or not left, left\n"
        "if real:\n"
        "    print('real torchvision')\n"
        "else:\n"
        "    from spandrel.architectures.RestoreFormer import tv_normalize\n"
        "    try:\n"
        "        tv_normalize(None, [0.5], [0.5])\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() != "real torchvision":
        assert result.stdout.startswith("ModelError"), result.stdout
        assert "torchvision" in result.stdout and "install" in result.stdout


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_files_load_to_the_same_model(tmp_path: Path, suffix: str) -> None:
    state = tiny_esrgan_state_dict()
    path = save_model(state, tmp_path / f"tiny{suffix}")
    read = read_state_dict(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) for k in state)
    model = load_upscale_model(FileRef.of(path))
    assert (model.architecture.name, model.scale) == ("ESRGAN", 2)
    assert load_upscale_model(FileRef.of(path)) is model  # cached by file


def test_new_layout_gives_the_same_network(tmp_path: Path) -> None:
    old = tiny_esrgan_state_dict(scale=4, blocks=2)
    image = torch.rand(1, 3, 12, 10)
    expected = model_from_state_dict(old, "old")(image)
    new_model = model_from_state_dict(to_new_layout(old, blocks=2), "new")
    assert new_model.scale == 4
    torch.testing.assert_close(new_model(image), expected, atol=1e-6, rtol=0)


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model.0.weight": torch.zeros(1), "thing": Path("x")}, str(path))
    with pytest.raises(UpscaleModelError, match="evil.pth"):
        read_state_dict(path)


def test_a_file_of_no_known_architecture_is_refused() -> None:
    with pytest.raises(ModelError, match="no upscale architecture"):
        model_from_state_dict({"foo.weight": torch.zeros(3, 3)}, "foo.safetensors")


@pytest.mark.parametrize(("tile", "overlap"), [(96, 48), (112, 56)])
def test_tiled_output_equals_the_whole_image_forward(tile: int, overlap: int) -> None:
    # Exact (to rounding) where the effective receptive field is within overlap / 4 (12 and 14 px here).
    model = model_from_state_dict(tiny_esrgan_state_dict(), "tiny")
    image = torch.rand(1, 3, 110, 130)
    with torch.inference_mode():
        whole = model(image)
        tiled = upscale_tiled(image, model, 2, tile, overlap)
    assert tiled.shape == (1, 3, 220, 260)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_a_small_overlap_differs_only_near_the_seams() -> None:
    model = model_from_state_dict(tiny_esrgan_state_dict(), "tiny")
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        difference = (upscale_tiled(image, model, 2, 40, 16) - model(image)).abs().amax(dim=(0, 1))
    seam = torch.zeros(128, dtype=torch.bool)
    seam[2 * 24 - 24:2 * 40 + 24] = True  # tiles at 0 and 24: their overlap 24..40, +-12 px of context
    assert difference[~seam][:, ~seam].max() < 1e-5
    assert difference.max() > 1e-4  # the seams do show a receptive field wider than overlap / 4


def _nearest(scale: int) -> torch.nn.Module:
    class Nearest(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.interpolate(x, scale_factor=scale, mode="nearest")
    return Nearest()


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(100, 37, 32, 16), (65, 64, 64, 0), (9, 200, 24, 8)])
def test_blend_weights_sum_to_one(height: int, width: int, tile: int, overlap: int) -> None:
    image = torch.rand(1, 2, height, width, dtype=torch.float64)
    out = upscale_tiled(image, _nearest(3), 3, tile, overlap)
    torch.testing.assert_close(out.double(), F.interpolate(image, scale_factor=3, mode="nearest"),
                               atol=1e-6, rtol=0)


def test_tile_starts_cover_the_axis() -> None:
    assert tile_starts(100, 512, 32) == [0]
    assert tile_starts(1000, 512, 32) == [0, 480, 488]
    assert tile_count(1000, 100, 512, 32) == 3


def test_progress_is_reported_per_tile() -> None:
    seen: list[tuple[int, int]] = []
    upscale_tiled(torch.rand(2, 3, 40, 70), _nearest(2), 2, 32, 8, on_tile=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 12) for i in range(1, 13)]  # 2 images x 2 rows x 3 columns


def test_out_of_memory_halves_the_tile_then_gives_up() -> None:
    largest = 64

    def picky(x: Tensor) -> Tensor:
        if max(x.shape[-2:]) > largest:
            raise torch.OutOfMemoryError("tile too large")
        return F.interpolate(x, scale_factor=2, mode="nearest")

    shrunk: list[int] = []
    image = torch.rand(1, 3, 200, 200)
    out = upscale_tiled_shrinking(image, picky, 2, 256, 16, 32, on_shrink=shrunk.append)
    assert shrunk == [128, 64]
    torch.testing.assert_close(out, F.interpolate(image, scale_factor=2, mode="nearest"))
    largest = 10
    with pytest.raises(TileOutOfMemory, match="32px"):
        upscale_tiled_shrinking(image, picky, 2, 256, 16, 32)
