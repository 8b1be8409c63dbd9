"""SaveLatent and LoadLatent: latents as ``.latent`` files (safetensors), as ComfyUI writes them.

The file format (and the legacy scale of old files) lives in :mod:`engine.backend.latent_files`,
reached through :mod:`engine.sdk.files`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from engine.sdk import COMBO, LATENT, STRING, Folders, Input, Node, NodeOutput, Output, RunContext, dumps_compact

LATENT_EXTENSION = ".latent"


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
        from engine.sdk import files

        subfolder, _, stem = filename_prefix.replace("\\", "/").rpartition("/")
        directory = ctx.folders.file_path("output", "", subfolder)
        directory.mkdir(parents=True, exist_ok=True)
        filename = f"{stem or 'Loom'}_{_next_counter(directory, stem or 'Loom'):05}_{LATENT_EXTENSION}"
        path = ctx.folders.file_path("output", filename, subfolder)
        files.write_latent_file(path, samples["samples"], {"prompt": dumps_compact(ctx.prompt)})
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
        from engine.sdk import files

        path = ctx.folders.file_path("input", latent)
        if not path.is_file():
            raise FileNotFoundError(f"latent file {latent!r} not found in the input folder {ctx.folders.input_dir}")
        return ({"samples": files.read_latent_file(path, latent)},)


LATENT_IO_NODES = (SaveLatent, LoadLatent)
