"""Prompt nodes of the rectified-flow families, with ComfyUI's names and inputs: CLIPTextEncodeSD3 (a text per
SD3 tower and the empty-padding choice) and CLIPTextEncodeFlux (CLIP-L's and T5-XXL's texts and the guidance
strength Flux dev reads). CLIPTextEncode encodes one text with every tower of an SD3 or Flux CLIP as well; it
adds no guidance (Flux dev's default, 3.5, is the sampler's when the conditioning has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.sdk import CLIP, COMBO, CONDITIONING, FLOAT, STRING, ClipHandle, Folders, Input, Node, Output, RunContext
from nodes.conditioning import Conditioning, text_fingerprint, with_values

_PROMPT = {"dynamicPrompts": True}
EMPTY_PADDINGS = ("none", "empty_prompt")


def _prompt(name: str) -> Input:
    return Input(name, STRING, multiline=True, extra=_PROMPT)


def _require_family(node: str, clip: ClipHandle, family: str, loaders: str) -> None:
    if clip.family.name != family:
        raise ValueError(f"{node} clip: this CLIP is {clip.family.label}'s; {node} needs {family.upper()}'s text "
                         f"encoders ({loaders}); use CLIPTextEncode for other models")


class CLIPTextEncodeSD3(Node):
    """SD3 / SD3.5 prompt with a text for each of CLIP-L, CLIP-G and T5-XXL; ``empty_padding`` none leaves an empty
    text out (ComfyUI's rule: engine/sdk/flow_text.py), empty_prompt encodes it as the empty prompt."""

    category = "advanced/conditioning"
    inputs = (Input("clip", CLIP), _prompt("clip_l"), _prompt("clip_g"), _prompt("t5xxl"),
              Input("empty_padding", COMBO, choices=EMPTY_PADDINGS))
    outputs = (Output(CONDITIONING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return text_fingerprint(folders, [inputs.get("clip_l"), inputs.get("clip_g"), inputs.get("t5xxl")])

    def run(self, ctx: RunContext, clip: ClipHandle, clip_l: str, clip_g: str, t5xxl: str,
            empty_padding: str) -> tuple[Conditioning]:
        from engine.sdk import flow_text, ops

        _require_family("CLIPTextEncodeSD3", clip, "sd3", "an SD3 checkpoint, TripleCLIPLoader, or DualCLIPLoader / "
                        "CLIPLoader type sd3")
        texts = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5xxl}
        return (ops.encode_text(ctx, clip, flow_text.sd3_tokens(ctx, clip, texts, empty_padding)),)


class CLIPTextEncodeFlux(Node):
    """Flux prompt: ``clip_l`` feeds CLIP-L's pooled output, ``t5xxl`` the T5-XXL conditioning; ``guidance`` is the
    strength Flux dev's guidance embedding reads (FluxGuidance sets it too)."""

    category = "advanced/conditioning/flux"
    inputs = (Input("clip", CLIP), _prompt("clip_l"), _prompt("t5xxl"),
              Input("guidance", FLOAT, default=3.5, min=0.0, max=100.0, step=0.1))
    outputs = (Output(CONDITIONING),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return text_fingerprint(folders, [inputs.get("clip_l"), inputs.get("t5xxl")])

    def run(self, ctx: RunContext, clip: ClipHandle, clip_l: str, t5xxl: str, guidance: float) -> tuple[Conditioning]:
        from engine.sdk import flow_text, ops

        _require_family("CLIPTextEncodeFlux", clip, "flux", "a Flux checkpoint or DualCLIPLoader type flux")
        tokens = flow_text.flux_tokens(ctx, clip, clip_l, t5xxl)
        return (with_values(ops.encode_text(ctx, clip, tokens), guidance=guidance),)


FLOW_TEXT_NODES = (CLIPTextEncodeSD3, CLIPTextEncodeFlux)
