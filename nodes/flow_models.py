"""Nodes of the rectified-flow families (SD3, SD3.5, Flux, AuraFlow): their model sampling, their 16-channel
empty latent, Flux's guidance strength and skip-layer guidance. Names, inputs and defaults are ComfyUI's.

ModelSamplingSD3 / AuraFlow / Flux make any MODEL read its output as a flow velocity on shifted noise levels
(ComfyUI's CONST prediction): every sampler and scheduler then works on flow models unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from engine.sdk import CONDITIONING, FLOAT, INT, LATENT, MODEL, STRING, Input, ModelHandle, Node, Output, RunContext
from nodes.conditioning import with_values
from nodes.image_ops import MAX_RESOLUTION

#: Channels of an SD3 / Flux latent.
FLOW_LATENT_CHANNELS = 16


def _shift_input(default: float) -> Input:
    return Input("shift", FLOAT, default=default, min=0.0, max=100.0, step=0.01)


class ModelSamplingSD3(Node):
    """Sample the model as SD3 does: rectified flow on timesteps shifted by ``shift`` (3.0 for SD3)."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), _shift_input(3.0))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, shift: float) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        return (model.with_sampling(sigmas.discrete_flow_spec(shift, 1000.0)),)


class ModelSamplingAuraFlow(Node):
    """Sample the model as AuraFlow does: rectified flow with timesteps in 0..1, shifted by ``shift``."""

    category = "advanced/model"
    inputs = (Input("model", MODEL), _shift_input(1.73))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, shift: float) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        return (model.with_sampling(sigmas.discrete_flow_spec(shift, 1.0)),)


class ModelSamplingFlux(Node):
    """Sample the model as Flux does: rectified flow with a shift that grows with the image size, from
    ``base_shift`` (256 latent patches) to ``max_shift`` (4096, a 1024x1024 image)."""

    category = "advanced/model"
    inputs = (
        Input("model", MODEL),
        Input("max_shift", FLOAT, default=1.15, min=0.0, max=100.0, step=0.01),
        Input("base_shift", FLOAT, default=0.5, min=0.0, max=100.0, step=0.01),
        Input("width", INT, default=1024, min=16, max=MAX_RESOLUTION, step=8),
        Input("height", INT, default=1024, min=16, max=MAX_RESOLUTION, step=8),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, max_shift: float, base_shift: float, width: int,
            height: int) -> tuple[ModelHandle]:
        from engine.sdk import sigmas

        return (model.with_sampling(sigmas.flux_spec(max_shift, base_shift, width, height)),)


class EmptySD3LatentImage(Node):
    """A batch of empty 16-channel latents (SD3, SD3.5, Flux), sized in pixels."""

    category = "latent/sd3"
    inputs = (
        Input("width", INT, default=1024, min=16, max=MAX_RESOLUTION, step=16),
        Input("height", INT, default=1024, min=16, max=MAX_RESOLUTION, step=16),
        Input("batch_size", INT, default=1, min=1, max=4096),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, width: int, height: int, batch_size: int) -> tuple[dict[str, Any]]:
        from engine.sdk import imaging

        return (imaging.empty_latent(width, height, batch_size, FLOW_LATENT_CHANNELS),)


class FluxGuidance(Node):
    """Set Flux's distilled guidance strength on the conditioning (Flux dev reads it; 3.5 is typical)."""

    category = "advanced/conditioning/flux"
    inputs = (Input("conditioning", CONDITIONING),
              Input("guidance", FLOAT, default=3.5, min=0.0, max=100.0, step=0.1))
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: list[Any], guidance: float) -> tuple[list[Any]]:
        return (with_values(conditioning, guidance=guidance),)


def _percent(name: str, default: float) -> Input:
    return Input(name, FLOAT, default=default, min=0.0, max=1.0, step=0.001)


def _layers(text: str) -> tuple[int, ...]:
    """Every integer in ``text`` ("7, 8, 9"), as ComfyUI reads its layer lists."""
    return tuple(int(number) for number in re.findall(r"\d+", text))


class SkipLayerGuidanceDiT(Node):
    """Guide away from the model's own prediction with some blocks skipped (double: SD3's joint blocks or Flux's
    double blocks; single: Flux's single blocks), between two fractions of the schedule."""

    category = "advanced/guidance"
    description = "Generic version of SkipLayerGuidance node that can be used on every DiT model."
    experimental = True
    inputs = (
        Input("model", MODEL),
        Input("double_layers", STRING, default="7, 8, 9"),
        Input("single_layers", STRING, default="7, 8, 9"),
        Input("scale", FLOAT, default=3.0, min=0.0, max=10.0, step=0.1),
        _percent("start_percent", 0.01),
        _percent("end_percent", 0.15),
        Input("rescaling_scale", FLOAT, default=0.0, min=0.0, max=10.0, step=0.01),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, scale: float, start_percent: float, end_percent: float,
            double_layers: str = "", single_layers: str = "", rescaling_scale: float = 0.0) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        blocks = guidance.SkippedBlocks(_layers(double_layers), _layers(single_layers))
        if not (blocks.double or blocks.single):
            return (model,)
        patch = guidance.SkipLayerGuidancePatch(blocks, scale, start_percent, end_percent, rescaling_scale)
        return (model.with_sampling_patch(patch),)


class SkipLayerGuidanceSD3(Node):
    """Skip-layer guidance for SD3/SD3.5: the listed joint blocks are skipped in a second positive pass (SD3.5
    medium's recommended layers are 7, 8, 9)."""

    category = "advanced/guidance"
    description = "Generic version of SkipLayerGuidance node that can be used on every DiT model."
    experimental = True
    inputs = (
        Input("model", MODEL),
        Input("layers", STRING, default="7, 8, 9", multiline=False),
        Input("scale", FLOAT, default=3.0, min=0.0, max=10.0, step=0.1),
        _percent("start_percent", 0.01),
        _percent("end_percent", 0.15),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, layers: str, scale: float, start_percent: float,
            end_percent: float) -> tuple[ModelHandle]:
        return SkipLayerGuidanceDiT().run(ctx, model, scale, start_percent, end_percent, double_layers=layers)


FLOW_MODEL_NODES = (ModelSamplingSD3, ModelSamplingAuraFlow, ModelSamplingFlux, EmptySD3LatentImage, FluxGuidance,
                    SkipLayerGuidanceDiT, SkipLayerGuidanceSD3)
