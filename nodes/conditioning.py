"""Text conditioning nodes: CLIPTextEncode, CLIPTextEncodeSDXL(Refiner), CLIPSetLastLayer, and the
ConditioningCombine / Average / Concat / SetArea(Percentage, Strength) / SetMask / SetTimestepRange /
ZeroOut operations on ComfyUI's CONDITIONING lists.

CONDITIONING is a list of ``[embedding [1, T, D], extras]``; extras hold ``pooled_output`` and
optional ``area``, ``strength``, ``mask`` (+ ``mask_strength``, ``set_area_to_bounds``),
``start_percent`` / ``end_percent`` and SDXL size fields, with ComfyUI's names and meanings; the
sampler resolves them (engine/backend/conditioning.py). Nodes never mutate what they receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.sdk import (
    CLIP,
    COMBO,
    CONDITIONING,
    EMBEDDING_PREFIX,
    FLOAT,
    INT,
    MASK,
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
#: ConditioningSetMask's set_cond_area choices: the whole image, or the mask's bounding box.
SET_COND_AREA = ("default", "mask bounds")


def with_values(conditioning: Conditioning, **values: Any) -> Conditioning:
    """A copy of ``conditioning`` with ``values`` set in every entry's extras (the input is untouched)."""
    return [[cond, {**extras, **values}] for cond, extras in conditioning]


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


class CLIPTextEncodeSDXLRefiner(Node):
    """SDXL refiner prompt with its aesthetic score and size conditioning."""

    display_name = "CLIP Text Encode (SDXL Refiner)"
    category = "advanced/conditioning"
    inputs = (
        Input("ascore", FLOAT, default=6.0, min=0.0, max=1000.0, step=0.01,
              tooltip="The aesthetic score the refiner aims for (6 for a prompt, 2.5 is usual for a negative)."),
        Input("width", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("height", INT, default=1024, min=0, max=MAX_RESOLUTION),
        Input("text", STRING, default="", multiline=True, extra={"dynamicPrompts": True}),
        Input("clip", CLIP),
    )
    outputs = (Output(CONDITIONING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return text_fingerprint(folders, [inputs.get("text")])

    def run(self, ctx: RunContext, ascore: float, width: int, height: int, text: str,
            clip: ClipHandle) -> tuple[Conditioning]:
        from engine.sdk import ops

        encoder = ctx.models.text_encoder(clip)
        tokens = encoder.tokenize(text, embedding_lookup=ops.embedding_lookup(ctx.folders))
        return (with_values(ops.encode_text(ctx, clip, tokens), aesthetic_score=ascore, width=width, height=height),)


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


class ConditioningAverage(Node):
    """Blend every entry of conditioning_to with conditioning_from: to * strength + from * (1 - strength)."""

    category = "conditioning"
    inputs = (
        Input("conditioning_to", CONDITIONING),
        Input("conditioning_from", CONDITIONING),
        Input("conditioning_to_strength", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning_to: Conditioning, conditioning_from: Conditioning,
            conditioning_to_strength: float) -> tuple[Conditioning]:
        if not conditioning_from:
            raise ValueError("ConditioningAverage: input 'conditioning_from' is empty; connect a text encoder")
        if len(conditioning_from) > 1:
            ctx.log.warning("ConditioningAverage uses only the first entry of conditioning_from")
        from engine.sdk import ops

        return (ops.average(conditioning_to, conditioning_from[0], conditioning_to_strength),)


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
        return (with_values(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


class ConditioningSetAreaPercentage(Node):
    """Restrict conditioning to a rectangle given as fractions of the image, with a strength."""

    display_name = "Conditioning (Set Area with Percentage)"
    category = "conditioning"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("width", FLOAT, default=1.0, min=0, max=1.0, step=0.01),
        Input("height", FLOAT, default=1.0, min=0, max=1.0, step=0.01),
        Input("x", FLOAT, default=0, min=0, max=1.0, step=0.01),
        Input("y", FLOAT, default=0, min=0, max=1.0, step=0.01),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, width: float, height: float, x: float, y: float,
            strength: float) -> tuple[Conditioning]:
        area = ("percentage", height, width, y, x)  # resolved against the latent's size when sampling
        return (with_values(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


class ConditioningSetAreaStrength(Node):
    """Set the weight of the conditioning against the others it is combined with."""

    category = "conditioning"
    inputs = (Input("conditioning", CONDITIONING),
              Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
        return (with_values(conditioning, strength=strength),)


class ConditioningSetMask(Node):
    """Restrict conditioning to a mask (weighted by its values times strength); "mask bounds" also runs
    it on the mask's bounding box only."""

    display_name = "Conditioning (Set Mask)"
    category = "conditioning"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("mask", MASK),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
        Input("set_cond_area", COMBO, choices=list(SET_COND_AREA)),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, mask: Any, strength: float,
            set_cond_area: str) -> tuple[Conditioning]:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim != 3:
            raise ValueError(f"ConditioningSetMask: input 'mask' has shape {tuple(mask.shape)}; a MASK is "
                             "[B, H, W] (connect a mask output, e.g. LoadImageMask or SolidMask)")
        return (with_values(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default",
                            mask_strength=strength),)


class ConditioningSetTimestepRange(Node):
    """Use the conditioning only between two points of the sampling run (0 = start, 1 = end)."""

    category = "advanced/conditioning"
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("start", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        Input("end", FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
    )
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning, start: float, end: float) -> tuple[Conditioning]:
        return (with_values(conditioning, start_percent=start, end_percent=end),)


class ConditioningZeroOut(Node):
    """Zero the conditioning (embedding and pooled output): an 'empty' prompt for SDXL-style models."""

    category = "advanced/conditioning"
    inputs = (Input("conditioning", CONDITIONING),)
    outputs = (Output(CONDITIONING),)

    def run(self, ctx: RunContext, conditioning: Conditioning) -> tuple[Conditioning]:
        from engine.sdk import ops

        return (ops.zeroed(conditioning),)


CONDITIONING_NODES = (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPSetLastLayer,
                      ConditioningCombine, ConditioningAverage, ConditioningConcat, ConditioningSetArea,
                      ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
                      ConditioningSetTimestepRange, ConditioningZeroOut)
