"""Write the example workflows (editor format) and their input images for the tiny-shapes demo models.

Each workflow is described here as a small list of nodes (type, title, widget values, links by
``(source id, output slot)``); this script lays them out left to right and writes litegraph's
editor JSON (schema 0.4), the format the editor saves. The input images are rendered with the
dataset's own renderer, so they show exactly what the demo models know.

    python -m tools.make_example_workflows            # writes workflows/*.json and workflows/inputs/*.png

``train-lora.json`` trains a LoRA in the graph on a small captioned dataset written here too
(``workflows/inputs/tiny-shapes-rings/``: purple rings, a shape the demo model was never shown, each PNG with
its caption beside it as ``.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.registry import NodeRegistry
from engine.workflow_layout import api_to_ui
from nodes import register_builtin_nodes
from tools.tiny_shapes_data import PALETTE, RESOLUTION, SUPERSAMPLE, ShapeSpec, edge_map, render

log = logging.getLogger("tools.make_example_workflows")

CHECKPOINT = "tiny-shapes.safetensors"
SD3_CHECKPOINT = "tiny-shapes-sd3.safetensors"
LORA = "tiny-shapes-dark.safetensors"
CONTROLNET = "tiny-shapes-edges.safetensors"
UPSCALER = "tiny-shapes-2x.safetensors"
SOURCE_IMAGE = "tiny-shapes-red-circle.png"
INPAINT_IMAGE = "tiny-shapes-inpaint.png"
EDGES_IMAGE = "tiny-shapes-edges.png"
SAMPLER = ["euler", "normal"]
TRAINING_SET = "tiny-shapes-rings"
#: The training set's rings: (colour, background, position, centre x, centre y, outer radius).
RINGS: tuple[tuple[str, str, str, int, int, int], ...] = (
    ("purple", "yellow", "center", 32, 32, 13),
    ("purple", "white", "top left", 14, 14, 12),
    ("purple", "yellow", "right", 51, 32, 12),
    ("purple", "blue", "bottom", 32, 50, 12),
)


@dataclass
class N:
    """One node: its id, class, title, widget values and input links ``name -> (source id, slot)``."""

    id: int
    type: str
    widgets: list[Any] | None = None
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    title: str | None = None


def ksampler(node_id: int, model: int, positive: int, negative: int, latent: tuple[int, int], *, seed: int = 42,
             steps: int = 20, cfg: float = 8.0, denoise: float = 1.0, model_slot: int = 0) -> N:
    links = {"model": (model, model_slot), "positive": (positive, 0), "negative": (negative, 0),
             "latent_image": latent}
    return N(node_id, "KSampler", [seed, "fixed", steps, cfg, *SAMPLER, denoise], links)


def prompts(clip: tuple[int, int], text: str, negative: str = "", first_id: int = 6) -> list[N]:
    return [N(first_id, "CLIPTextEncode", [text], {"clip": clip}, title="Prompt"),
            N(first_id + 1, "CLIPTextEncode", [negative], {"clip": clip}, title="Negative prompt")]


def decode_and_save(first_id: int, samples: int, vae: tuple[int, int], prefix: str) -> list[N]:
    return [N(first_id, "VAEDecode", None, {"samples": (samples, 0), "vae": vae}),
            N(first_id + 1, "SaveImage", [prefix], {"images": (first_id, 0)}, title="Save")]


def checkpoint() -> N:
    return N(4, "CheckpointLoaderSimple", [CHECKPOINT])


def txt2img() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a red circle on a blue background, center, large"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 4, 6, 7, (5, 0)),
            *decode_and_save(8, 3, (4, 2), "txt2img")]


def batch() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a yellow triangle on a purple background, bottom, large"),
            N(5, "EmptyLatentImage", [64, 64, 4], title="Batch of 4"), ksampler(3, 4, 6, 7, (5, 0), seed=7),
            *decode_and_save(8, 3, (4, 2), "batch")]


def img2img() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a yellow circle on a blue background, center, large"),
            N(10, "LoadImage", [SOURCE_IMAGE, "image"], title="Source image"),
            N(11, "VAEEncode", None, {"pixels": (10, 0), "vae": (4, 2)}),
            ksampler(3, 4, 6, 7, (11, 0), denoise=0.6), *decode_and_save(8, 3, (4, 2), "img2img")]


def inpaint() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a yellow square on a blue background, right, small"),
            N(10, "LoadImage", [INPAINT_IMAGE, "image"], title="Image with transparent area to repaint"),
            N(11, "VAEEncode", None, {"pixels": (10, 0), "vae": (4, 2)}),
            N(12, "SetLatentNoiseMask", None, {"samples": (11, 0), "mask": (10, 1)}),
            ksampler(3, 4, 6, 7, (12, 0)), *decode_and_save(8, 3, (4, 2), "inpaint")]


def lora() -> list[N]:
    return [checkpoint(), N(10, "LoraLoader", [LORA, 1.0, 1.0], {"model": (4, 0), "clip": (4, 1)}),
            *prompts((10, 1), "a red circle on a white background, center, large"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 10, 6, 7, (5, 0)),
            *decode_and_save(8, 3, (4, 2), "lora")]


def controlnet() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a green triangle on a white background, large"),
            N(10, "LoadImage", [EDGES_IMAGE, "image"], title="Edge map"),
            N(11, "ControlNetLoader", [CONTROLNET]),
            N(12, "ControlNetApplyAdvanced", [1.0, 0.0, 1.0],
              {"positive": (6, 0), "negative": (7, 0), "control_net": (11, 0), "image": (10, 0)}),
            N(5, "EmptyLatentImage", [64, 64, 1]),
            N(3, "KSampler", [42, "fixed", 20, 8.0, *SAMPLER, 1.0],
              {"model": (4, 0), "positive": (12, 0), "negative": (12, 1), "latent_image": (5, 0)}),
            *decode_and_save(8, 3, (4, 2), "controlnet")]


def hires_fix() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "an orange square on a green background, center, large"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 4, 6, 7, (5, 0)),
            N(10, "LatentUpscaleBy", ["nearest-exact", 2.0], {"samples": (3, 0)}),
            N(11, "KSampler", [42, "fixed", 20, 8.0, *SAMPLER, 0.5],
              {"model": (4, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (10, 0)}, title="Second pass"),
            *decode_and_save(8, 11, (4, 2), "hires-fix")]


def upscale() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a purple triangle on a yellow background, center, large"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 4, 6, 7, (5, 0)),
            N(8, "VAEDecode", None, {"samples": (3, 0), "vae": (4, 2)}),
            N(10, "UpscaleModelLoader", [UPSCALER]),
            N(11, "ImageUpscaleWithModel", None, {"upscale_model": (10, 0), "image": (8, 0)}),
            N(9, "SaveImage", ["upscale"], {"images": (11, 0)}, title="Save")]


def outpaint() -> list[N]:
    return [checkpoint(), *prompts((4, 1), "a red circle on a blue background, top left, small"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 4, 6, 7, (5, 0)),
            N(10, "VAEDecode", None, {"samples": (3, 0), "vae": (4, 2)}),
            N(11, "ImagePadForOutpaint", [0, 0, 32, 0, 8], {"image": (10, 0)}, title="Pad right"),
            N(12, "VAEEncodeForInpaint", [8], {"pixels": (11, 0), "vae": (4, 2), "mask": (11, 1)}),
            N(13, "KSampler", [42, "fixed", 20, 8.0, *SAMPLER, 1.0],
              {"model": (4, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (12, 0)}, title="Outpaint"),
            *decode_and_save(8, 13, (4, 2), "outpaint")]


def sd3_txt2img() -> list[N]:
    """The SD3-family demo (tools/train_tiny_sd3.py): T5-only conditioning, a 16-channel latent, rectified flow
    sampled on SD3's shifted noise levels (ModelSamplingSD3, shift 3) with euler / simple and a moderate cfg."""
    return [N(4, "CheckpointLoaderSimple", [SD3_CHECKPOINT]),
            N(10, "ModelSamplingSD3", [3.0], {"model": (4, 0)}),
            *prompts((4, 1), "a red circle on a blue background, center, large"),
            N(5, "EmptySD3LatentImage", [64, 64, 1]),
            N(3, "KSampler", [42, "fixed", 20, 4.5, "euler", "simple", 1.0],
              {"model": (10, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (5, 0)}),
            *decode_and_save(8, 3, (4, 2), "sd3-txt2img")]


def train_lora() -> list[N]:
    """Train a rank-4 LoRA for 8 steps on the rings dataset, save it and its loss curve, and sample with it."""
    training = [4, 1, 8, 0.001, 4, "AdamW", "MSE", 0, "bf16", "bf16", "LoRA", True, "[None]"]
    return [checkpoint(),
            N(10, "LoadImageTextSetFromFolderNode", [TRAINING_SET, "None", -1, -1], {"clip": (4, 1)},
              title="Training images and captions"),
            N(11, "VAEEncode", None, {"pixels": (10, 0), "vae": (4, 2)}),
            N(12, "TrainLoraNode", training, {"model": (4, 0), "latents": (11, 0), "positive": (10, 1)}),
            N(13, "SaveLoRANode", ["tiny-shapes-rings-lora"], {"lora": (12, 1), "steps": (12, 3)},
              title="Save LoRA"),
            N(14, "LossGraphNode", ["loss_graph"], {"loss": (12, 2)}),
            *prompts((4, 1), "a purple ring on a yellow background, center, large"),
            N(5, "EmptyLatentImage", [64, 64, 1]), ksampler(3, 12, 6, 7, (5, 0)),
            *decode_and_save(8, 3, (4, 2), "train-lora")]


WORKFLOWS = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint, "lora": lora, "controlnet": controlnet,
             "hires-fix": hires_fix, "outpaint": outpaint, "batch": batch,
             "upscale": upscale, "train-lora": train_lora, "sd3-txt2img": sd3_txt2img}


def api_prompt(nodes: Sequence[N], registry: NodeRegistry) -> dict[str, dict[str, Any]]:
    """The API-format prompt of ``nodes`` (widget lists named by the registry; the control slot skipped)."""
    prompt: dict[str, dict[str, Any]] = {}
    for node in nodes:
        cls = registry.get(node.type)
        if cls is None:
            raise KeyError(f"unknown node type {node.type}")
        inputs: dict[str, Any] = {name: [str(source), slot] for name, (source, slot) in node.links.items()}
        values = iter(node.widgets or [])
        for spec in cls.widget_inputs():
            inputs[spec.name] = next(values, spec.default)
            if spec.control_after_generate:
                next(values, None)
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or cls.display_name or node.type}}
    return prompt


def editor_json(nodes: Sequence[N], registry: NodeRegistry) -> dict[str, Any]:
    """litegraph's editor JSON for ``nodes``, laid out left to right by engine.workflow_layout."""
    return api_to_ui(api_prompt(nodes, registry), registry)


def write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    circle = ShapeSpec("circle", "red", "blue", "center", "large", 32, 32, 12)
    Image.fromarray(render(circle)).save(folder / SOURCE_IMAGE)
    # Inpainting: a red circle on the left; the right third is transparent (LoadImage's mask = 1 - alpha).
    left = ShapeSpec("circle", "red", "blue", "left", "small", 14, 32, 7)
    rgba = np.concatenate([render(left), np.full((64, 64, 1), 255, np.uint8)], axis=2)
    rgba[:, 40:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / INPAINT_IMAGE)
    # ControlNet: the outline of a large triangle in the top-left corner.
    triangle = ShapeSpec("triangle", "white", "black", "top left", "large", 18, 18, 12)
    Image.fromarray(edge_map(triangle)).save(folder / EDGES_IMAGE)


def render_ring(color: str, background: str, cx: int, cy: int, radius: int) -> np.ndarray:
    """A ring (a disc with a hole of half its radius) drawn like the dataset's shapes: at 4x, box-filtered."""
    scale = SUPERSAMPLE
    image = Image.new("RGB", (RESOLUTION * scale, RESOLUTION * scale), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for r, fill in ((radius, color), (radius // 2, background)):
        draw.ellipse(((cx - r) * scale, (cy - r) * scale, (cx + r) * scale - 1, (cy + r) * scale - 1),
                     fill=PALETTE[fill])
    return np.asarray(image.resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX), dtype=np.uint8)


def write_training_set(folder: Path) -> None:
    """The rings dataset: ``ring_N.png`` with its caption in ``ring_N.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (color, background, position, cx, cy, radius) in enumerate(RINGS, start=1):
        Image.fromarray(render_ring(color, background, cx, cy, radius)).save(folder / f"ring_{index}.png")
        text = f"a {color} ring on a {background} background, {position}, large\n"
        (folder / f"ring_{index}.txt").write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("workflows"))
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for name, build in WORKFLOWS.items():
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(editor_json(build(), registry), indent=1) + "\n")
        log.info("wrote %s", path)
    write_inputs(args.out / "inputs")
    write_training_set(args.out / "inputs" / TRAINING_SET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
