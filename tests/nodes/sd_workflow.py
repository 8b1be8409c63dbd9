"""Helpers for SD workflow tests: the demo model, an executor over real folders, a capturing output node,
and image files written to the input folder."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.models.manager import ModelManager
from engine.node import Input, Node, NodeOutput
from engine.types import CONDITIONING, IMAGE, LATENT, MASK
from main import build_registry
from tools.tiny_shapes_data import PALETTE

REPO = Path(__file__).resolve().parents[2]
DEMO_MODELS = REPO / "models"
DEMO_CHECKPOINT = "tiny-shapes.safetensors"
DEMO_SIZE = 64


#: Names of the capture node's inputs; each may be linked to anything of its type.
CAPTURE_INPUTS: dict[str, str] = {
    "latent": LATENT, "latent_in": LATENT, "image": IMAGE, "image_in": IMAGE, "mask": MASK, "cond": CONDITIONING,
}


def require_demo_model() -> None:
    if not (DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT).is_file():
        pytest.skip(f"the demo model models/checkpoints/{DEMO_CHECKPOINT} is missing (make it with "
                    "python -m tools.train_tiny_shapes)")


def make_executor(tmp_path: Path, *model_roots: Path) -> Executor:
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", tuple(model_roots))
    folders.ensure()
    executor = Executor(build_registry(), folders, OutputCache(2**30, 1000), ModelManager("cpu"))
    captured: dict[str, Any] = {}

    class Capture(Node):
        inputs = tuple(Input(name, kind, optional=True) for name, kind in CAPTURE_INPUTS.items())
        output_node = True

        def run(self, ctx: Any, **values: Any) -> NodeOutput:
            captured.clear()
            captured.update(values)
            return NodeOutput(ui={})

    executor.registry.register(Capture)
    executor.captured = captured  # type: ignore[attr-defined]
    return executor


def node_context(executor: Executor) -> RunContext:
    """A RunContext over the executor's folders and models, for calling nodes directly."""
    return RunContext("n", "p", executor.folders, ListSink(), threading.Event(), models=executor.models)


def run_prompt(executor: Executor, prompt: dict[str, Any], **capture: list[Any]) -> dict[str, Any]:
    """Run ``prompt`` plus a Capture node fed by ``capture`` (input name -> [node, output]).

    Returns what the Capture node received, plus ``events`` (everything the run emitted).
    """
    sink = ListSink()
    outcome = executor.execute({**prompt, "capture": {"class_type": "Capture", "inputs": capture}}, "p", sink)
    assert outcome.status_str == "success", sink.events[-1]
    return {**executor.captured, "events": sink.events}  # type: ignore[attr-defined]


def shape_image(path: Path, *, background: str = "blue", color: str = "red", box: tuple[int, int, int, int] = (
        8, 8, 28, 28), size: int = DEMO_SIZE, ellipse: bool = True) -> Path:
    """A demo-style picture (a flat shape on a flat background) saved as PNG."""
    image = Image.new("RGB", (size, size), PALETTE[background])
    draw = ImageDraw.Draw(image)
    (draw.ellipse if ellipse else draw.rectangle)(box, fill=PALETTE[color])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def mask_image(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (DEMO_SIZE, DEMO_SIZE)) -> Path:
    """A black PNG with a white rectangle (x0, y0, x1, y1 exclusive): a mask for LoadImageMask's red channel."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def nearest_colour(rgb: torch.Tensor) -> str:
    """The palette colour nearest an RGB value in 0..1."""
    values = rgb.float() * 255.0
    names = list(PALETTE)
    table = torch.tensor([PALETTE[name] for name in names], dtype=torch.float32)
    return names[int((table - values).norm(dim=1).argmin())]


def colour_share(image: torch.Tensor, colour: str) -> float:
    """The fraction of an IMAGE's [H, W, 3] pixels whose nearest palette colour is ``colour``."""
    names = list(PALETTE)
    table = torch.tensor([PALETTE[name] for name in names], dtype=torch.float32)
    pixels = image.reshape(-1, 3).float() * 255.0
    nearest = torch.cdist(pixels, table).argmin(dim=1)
    return float((nearest == names.index(colour)).float().mean())


def checkpoint_loader(name: str = DEMO_CHECKPOINT) -> dict[str, Any]:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}


def text(prompt: str, clip: str = "ckpt") -> dict[str, Any]:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": [clip, 1]}}


def ksampler(latent: list[Any], *, seed: int = 1, steps: int = 10, cfg: float = 5.0, denoise: float = 1.0,
             sampler: str = "euler", scheduler: str = "normal") -> dict[str, Any]:
    return {"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "denoise": denoise, "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": latent}}
