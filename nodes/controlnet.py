"""ControlNet nodes: ControlNetLoader, ControlNetApply (legacy) and ControlNetApplyAdvanced.

The loader returns a light CONTROL_NET handle (the file); the apply nodes attach a
:class:`~engine.backend.control_apply.ControlSpec` (handle, hint image, strength, window) to every
conditioning entry under ``"control"``, chained onto the spec already there. Nothing is loaded or
run until a sampler needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.sdk import (
    COMBO,
    CONDITIONING,
    CONTROL_NET,
    FLOAT,
    IMAGE,
    VAE,
    ControlNetHandle,
    FileRef,
    Folders,
    Input,
    Node,
    Output,
    RunContext,
)
from nodes.controlnet_union import CONTROLNET_UNION_NODES
from nodes.model_loaders import file_fingerprint

if TYPE_CHECKING:
    from torch import Tensor

Conditioning = list[list[Any]]

_STRENGTH = Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01,
                  tooltip="How strongly the ControlNet steers the image (0 turns it off).")


def _controlnets(folders: Folders) -> list[str]:
    return folders.list_models("controlnet")


class ControlNetLoader(Node):
    """Load a ControlNet (SD1.x / SD2.x / SDXL in LDM or diffusers layout; SD3; InstantX or XLabs Flux) from
    models/controlnet."""

    display_name = "Load ControlNet Model"
    category = "loaders"
    inputs = (Input("control_net_name", COMBO, choices=_controlnets, file_folder="controlnet",
                    tooltip="The ControlNet file to load."),)
    outputs = (Output(CONTROL_NET),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Any) -> str | None:
        return file_fingerprint(folders, "controlnet", inputs["control_net_name"])

    def run(self, ctx: RunContext, control_net_name: str) -> tuple[ControlNetHandle]:
        from engine.sdk import files

        path = ctx.folders.model_path("controlnet", control_net_name)
        # Control-LoRAs are built from the sampled model; anything else must be a ControlNet (refused now if not)
        description = files.describe_control_lora(path) or files.describe_controlnet(path)
        ctx.log.info("%s: %s", control_net_name, description)
        shuffle = Path(control_net_name).stem.endswith("_shuffle")
        return (ControlNetHandle(FileRef.of(path), global_average_pooling=shuffle),)


def _check_window(ctx: RunContext, start_percent: float, end_percent: float) -> None:
    if start_percent > end_percent:  # ComfyUI runs such workflows too: the net simply never acts
        ctx.log.warning("node %s: start_percent %s is after end_percent %s, so the ControlNet never acts; "
                        "make start_percent <= end_percent", ctx.node_id, start_percent, end_percent)


class ControlNetApply(Node):
    """Steer the prompt with a ControlNet and a hint image (also applied to the negative prompt)."""

    display_name = "Apply ControlNet (OLD)"
    category = "conditioning/controlnet"
    inputs = (Input("conditioning", CONDITIONING), Input("control_net", CONTROL_NET), Input("image", IMAGE),
              _STRENGTH)
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, control_net: ControlNetHandle, image: Tensor,
            strength: float) -> tuple[Conditioning]:
        from engine.sdk import ops

        if strength == 0:
            return (conditioning,)
        return (ops.attach_control(conditioning, control_net, image, strength, 0.0, 1.0, True, {}),)


class ControlNetApplyAdvanced(Node):
    """Steer positive and negative prompts with a ControlNet and a hint image, over part of the steps."""

    display_name = "Apply ControlNet"
    category = "conditioning/controlnet"
    inputs = (
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("control_net", CONTROL_NET),
        Input("image", IMAGE),
        _STRENGTH,
        Input("start_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001,
              tooltip="When the ControlNet starts acting (0 = the first step)."),
        Input("end_percent", FLOAT, default=1.0, min=0.0, max=1.0, step=0.001,
              tooltip="When the ControlNet stops acting (1 = the last step)."),
        Input("vae", VAE, optional=True,
              tooltip="For SD3 and InstantX Flux ControlNets, which read the hint image as a latent: the model's VAE."),
    )
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def run(self, ctx: RunContext, positive: Conditioning, negative: Conditioning, control_net: ControlNetHandle,
            image: Tensor, strength: float, start_percent: float, end_percent: float,
            vae: Any = None) -> tuple[Conditioning, Conditioning]:
        from engine.sdk import control_hints, ops

        if strength == 0:
            return positive, negative
        _check_window(ctx, start_percent, end_percent)
        shared: dict[int, Any] = {}  # one new spec per previous spec, across positive and negative
        encoder = None if vae is None else control_hints.hint_encoder(ctx, vae)
        return (ops.attach_control(positive, control_net, image, strength, start_percent, end_percent, False, shared,
                                   vae=encoder),
                ops.attach_control(negative, control_net, image, strength, start_percent, end_percent, False, shared,
                                   vae=encoder))


CONTROLNET_NODES: tuple[type[Node], ...] = (ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced,
                                            *CONTROLNET_UNION_NODES)
