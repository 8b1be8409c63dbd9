"""Latent operation nodes (ComfyUI's comfy_extras/nodes_latent.py): make a LATENT_OPERATION and apply
it to a latent, or to the guidance of every sampling step of a MODEL.

A LATENT_OPERATION is a function ``operation(latent=tensor) -> tensor``. Loom's are small frozen
dataclasses (:mod:`engine.sdk.latent_edit`): hashable and picklable, so they can be cached, stored in
a MODEL handle and sent to cluster workers.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import FLOAT, INT, LATENT, MODEL, Input, ModelHandle, Node, Output, RunContext

Latent = dict[str, Any]

#: The socket type of a latent operation.
LATENT_OPERATION = "LATENT_OPERATION"
_CATEGORY = "latent/advanced/operations"


class LatentApplyOperation(Node):
    """Apply a latent operation to latents."""

    category = _CATEGORY
    inputs = (Input("samples", LATENT), Input("operation", LATENT_OPERATION))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, samples: Latent, operation: Any) -> tuple[Latent]:
        from engine.sdk import latent_edit

        return (latent_edit.apply_operation(samples, operation),)


class LatentApplyOperationCFG(Node):
    """Apply a latent operation to the guidance (cond - uncond) of each sampling step, before CFG."""

    category = _CATEGORY
    inputs = (
        Input("model", MODEL),
        Input("operation", LATENT_OPERATION),
        Input("start_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
              tooltip="Start applying the operation at this fraction of the model's denoising schedule. "
                      "0 is the beginning."),
        Input("end_percent", FLOAT, default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
              tooltip="Stop applying the operation at this fraction of the model's denoising schedule. "
                      "1 is the end."),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, operation: Any, start_percent: float = 0.0,
            end_percent: float = 1.0) -> tuple[ModelHandle]:
        return (model.with_pre_cfg(operation, start_percent, end_percent),)


class LatentOperationTonemapReinhard(Node):
    """A latent operation that compresses large latent magnitudes (Reinhard tone mapping)."""

    category = _CATEGORY
    inputs = (Input("multiplier", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),)
    outputs = (Output(LATENT_OPERATION),)

    def run(self, ctx: RunContext, multiplier: float) -> tuple[Any]:
        from engine.sdk import latent_edit

        return (latent_edit.TonemapReinhard(multiplier),)


class LatentOperationSharpen(Node):
    """A latent operation that sharpens the latent's per-pixel directions, keeping their lengths."""

    category = _CATEGORY
    inputs = (
        Input("sharpen_radius", INT, default=9, min=1, max=31, step=1),
        Input("sigma", FLOAT, default=1.0, min=0.1, max=10.0, step=0.1),
        Input("alpha", FLOAT, default=0.1, min=0.0, max=5.0, step=0.01),
    )
    outputs = (Output(LATENT_OPERATION),)

    def run(self, ctx: RunContext, sharpen_radius: int, sigma: float, alpha: float) -> tuple[Any]:
        from engine.sdk import latent_edit

        return (latent_edit.Sharpen(sharpen_radius, sigma, alpha),)


LATENT_OPERATION_NODES: tuple[type[Node], ...] = (
    LatentApplyOperation,
    LatentApplyOperationCFG,
    LatentOperationTonemapReinhard,
    LatentOperationSharpen,
)
