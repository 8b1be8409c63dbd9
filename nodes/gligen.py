"""GLIGENLoader and GLIGENTextBoxApply: grounded boxes of text for SD1 (ComfyUI's interface).

GLIGENLoader reads a GLIGEN file from models/gligen (:mod:`engine.sdk.gligen`). GLIGENTextBoxApply
encodes ``text`` with the CLIP and appends its pooled output with the box (width, height, x, y in
image pixels, stored in latent pixels: each divided by 8) to every conditioning entry's GLIGEN
boxes; during sampling the GLIGEN's gated self-attention grounds those entries' rows only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.sdk import CLIP, COMBO, CONDITIONING, INT, STRING, ClipHandle, Folders, Input, Node, Output, RunContext
from nodes.conditioning import MAX_RESOLUTION
from nodes.model_loaders import file_fingerprint

if TYPE_CHECKING:
    from engine.sdk.gligen import Gligen

GLIGEN = "GLIGEN"
Conditioning = list[list[Any]]


def _gligen_files(folders: Folders) -> list[str]:
    return folders.list_models("gligen")


class GLIGENLoader(Node):
    """Load a GLIGEN model (position net and gated self-attention) from models/gligen."""

    category = "loaders"
    inputs = (Input("gligen_name", COMBO, choices=_gligen_files, file_folder="gligen",
                    tooltip="The GLIGEN file (models/gligen), e.g. an SD1 text-box model."),)
    outputs = (Output(GLIGEN),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        name = inputs.get("gligen_name")
        return file_fingerprint(folders, "gligen", name) if isinstance(name, str) else None

    def run(self, ctx: RunContext, gligen_name: str) -> tuple[Gligen]:
        from engine.sdk import gligen

        path = ctx.folders.model_path("gligen", gligen_name)
        try:
            return (gligen.load_gligen(path),)
        except gligen.GligenFileError as exc:
            raise gligen.GligenFileError(f"GLIGENLoader input gligen_name: {exc}") from exc


class GLIGENTextBoxApply(Node):
    """Ground a text in a box: appends the box and the text's pooled CLIP output to every entry."""

    category = "conditioning/gligen"
    inputs = (
        Input("conditioning_to", CONDITIONING),
        Input("clip", CLIP),
        Input("gligen_textbox_model", GLIGEN),
        Input("text", STRING, multiline=True, extra={"dynamicPrompts": True},
              tooltip="What the box holds."),
        Input("width", INT, default=64, min=8, max=MAX_RESOLUTION, step=8, tooltip="Box width in image pixels."),
        Input("height", INT, default=64, min=8, max=MAX_RESOLUTION, step=8, tooltip="Box height in image pixels."),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=8, tooltip="Box left edge in image pixels."),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=8, tooltip="Box top edge in image pixels."),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning_to: Conditioning, clip: ClipHandle, gligen_textbox_model: Gligen,
            text: str, width: int, height: int, x: int, y: int) -> tuple[Conditioning]:
        from engine.sdk import gligen, ops

        encoder = ctx.models.text_encoder(clip)
        encoded = ops.encode_text(ctx, clip, encoder.tokenize(text, embedding_lookup=ops.embedding_lookup(ctx.folders)))
        pooled = encoded[0][1]["pooled_output"]
        try:
            box = (height // 8, width // 8, y // 8, x // 8)
            return (gligen.add_text_box(conditioning_to, gligen_textbox_model, pooled, box),)
        except ValueError as exc:
            raise ValueError(f"GLIGENTextBoxApply inputs clip / gligen_textbox_model: {exc}") from exc


GLIGEN_NODES: tuple[type[Node], ...] = (GLIGENLoader, GLIGENTextBoxApply)
