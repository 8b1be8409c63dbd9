"""SaveLatent and LoadLatent: latents as ``.latent`` files (safetensors), as ComfyUI writes them.

A ``.latent`` file holds one tensor ``latent_tensor`` [B,C,h,w] and an empty marker tensor
``latent_format_version_0``. Files without the marker come from old versions that stored latents
pre-scaled by the SD1 factor, so they are multiplied by 1/0.18215 when loaded (ComfyUI's rule).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.context import RunContext
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output
from engine.types import COMBO, LATENT, STRING

LATENT_EXTENSION = ".latent"
_VERSION_MARKER = "latent_format_version_0"
_LEGACY_SCALE = 1.0 / 0.18215


def _latent_choices(folders: Folders) -> list[str]:
    return folders.list_files("input", (LATENT_EXTENSION,))


def _next_counter(directory: Any, stem: str) -> int:
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{5}})_{re.escape(LATENT_EXTENSION)}$")
    counters = [int(m.group(1)) for p in directory.iterdir() if (m := pattern.match(p.name))]
    return max(counters, default=0) + 1


class SaveLatent(Node):
    """Save latents to the output folder as a .latent file, to reload them with LoadLatent."""

    category = "_for_testing"
    inputs = (Input("samples", LATENT), Input("filename_prefix", STRING, default="latents/Loom"))
    output_node = True

    def run(self, ctx: RunContext, samples: dict[str, Any], filename_prefix: str) -> NodeOutput:
        subfolder, _, stem = filename_prefix.replace("\\", "/").rpartition("/")
        directory = ctx.folders.file_path("output", "", subfolder)
        directory.mkdir(parents=True, exist_ok=True)
        filename = f"{stem or 'Loom'}_{_next_counter(directory, stem or 'Loom'):05}_{LATENT_EXTENSION}"
        path = ctx.folders.file_path("output", filename, subfolder)
        tensors = {"latent_tensor": samples["samples"].contiguous(), _VERSION_MARKER: torch.tensor([])}
        save_file(tensors, str(path), metadata={"prompt": _json(ctx.prompt)})
        return NodeOutput(ui={"latents": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})


class LoadLatent(Node):
    """Load a .latent file from the input folder."""

    category = "_for_testing"
    inputs = (Input("latent", COMBO, choices=_latent_choices, file_folder="input"),)
    outputs = (Output(LATENT),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return hashlib.sha256(folders.file_path("input", inputs["latent"]).read_bytes()).hexdigest()

    def run(self, ctx: RunContext, latent: str) -> tuple[dict[str, Any]]:
        path = ctx.folders.file_path("input", latent)
        if not path.is_file():
            raise FileNotFoundError(f"latent file {latent!r} not found in the input folder {ctx.folders.input_dir}")
        tensors = load_file(str(path))
        if "latent_tensor" not in tensors:
            raise ValueError(f"{latent!r} holds no 'latent_tensor'; it was not written by SaveLatent")
        scale = 1.0 if _VERSION_MARKER in tensors else _LEGACY_SCALE
        return ({"samples": tensors["latent_tensor"].float() * scale},)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


LATENT_IO_NODES = (SaveLatent, LoadLatent)
