"""DiffControlNetLoader: a "difference" ControlNet, whose weights are stored relative to a base model.

The CONTROL_NET handle names the file and carries the MODEL (``base``): when a sampler needs the net,
the model manager adds that model's UNet weights to the file's for the names both share, as ComfyUI
does (engine/models/diff_controlnet.py). A full ControlNet or a T2I-Adapter picked here loads as
ControlNetLoader would load it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.sdk import (
    COMBO,
    CONTROL_NET,
    MODEL,
    ControlNetHandle,
    FileRef,
    Folders,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
)
from nodes.model_loaders import file_fingerprint


def _controlnets(folders: Folders) -> list[str]:
    return folders.list_models("controlnet")


class DiffControlNetLoader(Node):
    """Load a difference ControlNet from models/controlnet over the given model's UNet weights."""

    display_name = "Load ControlNet Model (diff)"
    category = "loaders"
    inputs = (Input("model", MODEL, tooltip="The model the difference ControlNet was made from."),
              Input("control_net_name", COMBO, choices=_controlnets, file_folder="controlnet",
                    tooltip="The difference ControlNet file to load."))
    outputs = (Output(CONTROL_NET),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "controlnet", inputs["control_net_name"])

    def run(self, ctx: RunContext, model: ModelHandle, control_net_name: str) -> tuple[ControlNetHandle]:
        from engine.sdk import files

        path = ctx.folders.model_path("controlnet", control_net_name)
        description = files.describe_controlnet(path, difference_ok=True)  # refuses other files now, naming them
        ctx.log.info("%s: %s over %s", control_net_name, description, model.checkpoint.name)
        shuffle = Path(control_net_name).stem.endswith("_shuffle")
        base = dataclasses.replace(model, patches=(), pre_cfg=(), sampling_patches=())
        return (ControlNetHandle(FileRef.of(path), global_average_pooling=shuffle, base=base),)


DIFF_CONTROLNET_NODES: tuple[type[Node], ...] = (DiffControlNetLoader,)
