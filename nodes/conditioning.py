"""Text conditioning nodes: CLIPTextEncode, CLIPTextEncodeSDXL, CLIPSetLastLayer, and the
ConditioningCombine / Concat / SetArea / ZeroOut operations on ComfyUI's CONDITIONING lists.

CONDITIONING is a list of ``[embedding [1, T, D], extras]``; extras hold ``pooled_output`` and
optional ``area``, ``strength`` and SDXL size fields. Nodes never mutate what they receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.sdk import (
    CLIP,
    CONDITIONING,
    EMBEDDING_PREFIX,
    FLOAT,
    INT,
    STRING,
    ClipHandle,
    Folders,
    Input,
    Node,
    Output,
    RunContext,
)

Conditioning = list[list[Any]]
MAX_RESOLUTION = 16384


def text_fingerprint(folders: Folders, texts: list[Any]) -> str | None:
    """Cache-key material for text nodes: the embedding files, when a prompt may name one.

    A linked (non-literal) text may hold ``embedding:`` too, so only literal texts without it skip this.
    """
    if all(isinstance(text, str) and EMBEDDING_PREFIX not in text for text in texts):
        return None
    from engine.sdk import ops

    return ops.embeddings_fingerprint(folders)


class CLIPTextEncode(Node):
    """Encode a prompt into conditioning. Supports (word:1.2) weighting and long prompts."""

    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    aliases = ("CLIPEncode",)
    inputs = (Input("text", STRING, default="", multiline=True, extra={"dynamicPrompts": True},
                    tooltip="The prompt; (word:1.2) weights a word, \\( escapes a bracket."),
              Input("clip", CLIP))
    outputs = (Output(CONDITIONING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return text_fingerprint(folders, [inputs.get("text")])

    def run(self, ctx: RunContext, text: str, clip: ClipHandle) -> tuple[Conditioning]:
        from engine.sdk import ops

        encoder = ctx.models.text_encoder(clip)
        return (ops.encode_text(ctx, clip, encoder.tokenize(text, embedding_lookup=ops.embedding_lookup(ctx.folders))),)


class CLIPTextEncodeSDXL(Node):
    """SDXL prompt with separate texts for the two encoders and the size conditioning."""

    category = "advanced/conditioning"
    inputs = (
        Input("clip", CLIP),
        Input("width", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("height", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("crop_w", INT, default=0, min=0, max=MAX_RESOLUTION),
        Input("crop_h", INT, default=0, min=0, max=MAX_RESOLUTION),
        Input("target_width", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("target_height", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("text_g", STRING, default="", multiline=True),
        Input("text_l", STRING, default="", multiline=True),
    )
    outputs = (Output(CONDITIONING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return text_fingerprint(folders, [inputs.get("text_g"), inputs.get("text_l")])

    def run(self, ctx: RunContext, clip: ClipHandle, width: int, height: int, crop_w: int, crop_h: int,
            target_width: int, target_height: int, text_g: str, text_l: str) -> tuple[Conditioning]:
        from engine.sdk import ops

        if not clip.family.is_sdxl:
            raise ValueError(f"CLIPTextEncodeSDXL needs an SDXL checkpoint; this CLIP is {clip.family.label}: "
                             "use CLIPTextEncode")
        tokens = ops.tokenize_per_tower(ctx, clip, lambda key: text_l if key == "clip_l" else text_g)
        [[cond, extras]] = ops.encode_text(ctx, clip, tokens)
        extras.update(width=width, height=height, crop_w=crop_w, crop_h=crop_h,
                      target_width=target_width, target_height=target_height)
        return ([[cond, extras]],)


class CLIPSetLastLayer(Node):
    """Clip skip: read the text encoder's output from an earlier layer (-1 = last, -2 = penultimate)."""

    category = "conditioning"
    inputs = (Input("clip", CLIP), Input("stop_at_clip_layer", INT, default=-1, min=-24, max=-1, step=1),)
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip: ClipHandle, stop_at_clip_layer: int) -> tuple[ClipHandle]:
        return (clip.with_layer(stop_at_clip_layer),)


class ConditioningCombine(Node):
    """Use both conditionings: their predictions are averaged during sampling."""

    display_name = "Conditioning (Combine)"
    category = "conditioning"
    inputs = (Input("conditioning_1", CONDITIONING), Input("conditioning_2", CONDITIONING))
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning_1: Conditioning, conditioning_2: Conditioning
            ) -> tuple[Conditioning]:
        return ([*conditioning_1, *conditioning_2],)


class ConditioningConcat(Node):
    """Append conditioning_from's tokens to every entry of conditioning_to (one longer prompt)."""

    display_name = "Conditioning (Concat)"
    category = "conditioning"
    inputs = (Input("conditioning_to", CONDITIONING), Input("conditioning_from", CONDITIONING))
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning_to: Conditioning, conditioning_from: Conditioning
            ) -> tuple[Conditioning]:
        if len(conditioning_from) > 1:
            ctx.log.warning("ConditioningConcat uses only the first entry of conditioning_from")
        from engine.sdk import ops

        return (ops.concat_tokens(conditioning_to, conditioning_from[0][0]),)


class ConditioningSetArea(Node):
    """Restrict conditioning to a rectangle of the image, with a strength."""

    display_name = "Conditioning (Set Area)"
    category = "conditioning"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("width", INT, default=64, min=64, max=MAX_RESOLUTION, step=8),
        Input("height", INT, default=64, min=64, max=MAX_RESOLUTION, step=8),
        Input("x", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("y", INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, width: int, height: int, x: int, y: int,
            strength: float) -> tuple[Conditioning]:
        area = (height // 8, width // 8, y // 8, x // 8)
        return ([[cond, {**extras, "area": area, "strength": strength}] for cond, extras in conditioning],)


class ConditioningZeroOut(Node):
    """Zero the conditioning (embedding and pooled output): an 'empty' prompt for SDXL-style models."""

    category = "advanced/conditioning"
    inputs = (Input("conditioning", CONDITIONING),)
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning) -> tuple[Conditioning]:
        from engine.sdk import ops

        return (ops.zeroed(conditioning),)


CONDITIONING_NODES = (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPSetLastLayer, ConditioningCombine,
                      ConditioningConcat, ConditioningSetArea, ConditioningZeroOut)
