"""Torch-backed SDK module: the prompts of CLIPTextEncodeSD3 and CLIPTextEncodeFlux, tokenized per tower.

A node imports this module inside ``run`` and hands the tokens to :func:`engine.sdk.ops.encode_text`. The
encoding rules (how the towers' outputs join) are :class:`engine.backend.flow_text.FlowTextEncoder`'s.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.backend.flow_text import T5_KEY, no_tokens
from engine.backend.prompt_weights import TokenizedPrompt
from engine.context import RunContext
from engine.models.handles import ClipHandle
from engine.sdk import ops

__all__ = ["EMPTY_PADDINGS", "flux_tokens", "sd3_tokens"]

#: CLIPTextEncodeSD3's empty_padding choices, in ComfyUI's order.
EMPTY_PADDINGS = ("none", "empty_prompt")
_CLIP_KEYS = ("clip_l", "clip_g")


def sd3_tokens(ctx: RunContext, clip: ClipHandle, texts: Mapping[str, str], empty_padding: str
               ) -> dict[str, TokenizedPrompt]:
    """Each SD3 tower's tokens of its own text (``texts``: clip_l, clip_g, t5xxl).

    ``empty_padding`` "empty_prompt" encodes an empty text as the empty prompt. "none" gives an empty text no
    tokens, ComfyUI's way: T5 then reads only its end token; CLIP-L and CLIP-G go without tokens only when both
    texts are empty (one empty text is still padded with empty-prompt chunks to its partner's length, so it
    reads as the empty prompt), and then the conditioning has no CLIP part and a zero pooled output.
    """
    if empty_padding not in EMPTY_PADDINGS:
        raise ValueError(f"CLIPTextEncodeSD3 empty_padding: {empty_padding!r} is not one of {EMPTY_PADDINGS}")
    tokens = ops.tokenize_per_tower(ctx, clip, lambda key: texts[key])
    if empty_padding == "none":
        clip_empty = not texts["clip_l"] and not texts["clip_g"]
        empty = [*(_CLIP_KEYS if clip_empty else ()), *(() if texts[T5_KEY] else (T5_KEY,))]
        for key in empty:
            if key in tokens:
                tokens[key] = no_tokens()
    return tokens


def flux_tokens(ctx: RunContext, clip: ClipHandle, clip_l: str, t5xxl: str) -> dict[str, TokenizedPrompt]:
    """Flux's towers' tokens: ``clip_l`` for CLIP-L (its pooled output), ``t5xxl`` for T5-XXL (the conditioning)."""
    texts = {"clip_l": clip_l, T5_KEY: t5xxl}
    return ops.tokenize_per_tower(ctx, clip, lambda key: texts[key])
