"""HypernetworkLoader: an AUTOMATIC1111 hypernetwork (models/hypernetworks) on a MODEL, with a strength.

The node returns the model with one more sampling patch (:mod:`engine.sdk.hypernetwork`): every
attention's key and value inputs of a width the file has become ``x + mlp(x) * strength`` during
sampling (self- and cross-attention, as A1111 and ComfyUI apply them). No weight changes, so the
input MODEL samples exactly as before; strength 0 adds nothing. The file's size and mtime are part
of the node's fingerprint, so an edited file is noticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.sdk import COMBO, FLOAT, MODEL, Folders, Input, ModelHandle, Node, Output, RunContext
from nodes.model_loaders import file_fingerprint


def _hypernetworks(folders: Folders) -> list[str]:
    return folders.list_models("hypernetworks")


class HypernetworkLoader(Node):
    """Apply a hypernetwork to the diffusion model's attention keys and values."""

    category = "loaders"
    inputs = (
        Input("model", MODEL),
        Input("hypernetwork_name", COMBO, choices=_hypernetworks, file_folder="hypernetworks",
              tooltip="The hypernetwork file (models/hypernetworks, .pt or .safetensors)."),
        Input("strength", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01,
              tooltip="How strongly the hypernetwork changes the keys and values; 0 leaves the model unchanged."),
    )
    outputs = (Output(MODEL),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        name = inputs.get("hypernetwork_name")
        return file_fingerprint(folders, "hypernetworks", name) if isinstance(name, str) else None

    def run(self, ctx: RunContext, model: ModelHandle, hypernetwork_name: str,
            strength: float) -> tuple[ModelHandle]:
        from engine.sdk import hypernetwork

        path = ctx.folders.model_path("hypernetworks", hypernetwork_name)
        return (model.with_sampling_patch(hypernetwork.hypernetwork_patch(path, strength)),)


HYPERNETWORK_NODES: tuple[type[Node], ...] = (HypernetworkLoader,)
