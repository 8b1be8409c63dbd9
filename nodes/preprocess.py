"""Hint preprocessors for ControlNets: Canny edges, a threshold (scribble) map, and fitting a hint to a
latent's grid. The algorithms (torch, no OpenCV) live in :mod:`engine.sdk.imaging`
(``engine.backend.preprocess``), which documents how :func:`~engine.backend.preprocess.canny` matches
ComfyUI's ``Canny`` node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sdk import FLOAT, IMAGE, LATENT, Input, Node, Output, RunContext

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["PREPROCESS_NODES", "Canny", "ControlNetHintResize", "ImageThreshold"]

#: Image pixels per latent pixel: a hint is fitted to 8x the latent's grid.
_LATENT_SCALE = 8


class Canny(Node):
    """Edge map of an image (the hint for canny ControlNets): white edges on black."""

    python_module = "comfy_extras.nodes_canny"
    category = "image/preprocessors"
    inputs = (
        Input("image", IMAGE),
        Input("low_threshold", FLOAT, default=0.4, min=0.01, max=0.99, step=0.01,
              tooltip="Weaker edges are kept only where they touch a strong edge."),
        Input("high_threshold", FLOAT, default=0.8, min=0.01, max=0.99, step=0.01,
              tooltip="Edges stronger than this are always kept."),
    )
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, low_threshold: float, high_threshold: float) -> tuple[Tensor]:
        from engine.sdk import imaging

        if low_threshold > high_threshold:
            raise ValueError(f"node {ctx.node_id}: low_threshold {low_threshold} is above high_threshold "
                             f"{high_threshold}; make low_threshold <= high_threshold")
        return (imaging.canny_image(image, low_threshold, high_threshold),)


class ImageThreshold(Node):
    """Black and white image: 1 where the brightness is above the threshold (scribble-style hints)."""

    category = "image/preprocessors"
    inputs = (Input("image", IMAGE),
              Input("threshold", FLOAT, default=0.5, min=0.0, max=1.0, step=0.01,
                    tooltip="Pixels brighter than this become white, the others black."))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, threshold: float) -> tuple[Tensor]:
        from engine.sdk import imaging

        return (imaging.threshold_image(image, threshold),)


class ControlNetHintResize(Node):
    """Fit a hint image to a latent's pixel size (8x its grid): centre crop, then nearest-exact resize,
    exactly as sampling fits hints; useful to preview what the ControlNet sees."""

    category = "image/preprocessors"
    inputs = (Input("image", IMAGE), Input("latent", LATENT))
    outputs = (Output(IMAGE),)

    def run(self, ctx: RunContext, image: Tensor, latent: dict[str, Any]) -> tuple[Tensor]:
        from engine.sdk import imaging

        height, width = (int(s) * _LATENT_SCALE for s in latent["samples"].shape[-2:])
        return (imaging.fit_hint_image(image, height, width),)


PREPROCESS_NODES: tuple[type[Node], ...] = (Canny, ImageThreshold, ControlNetHintResize)

