"""Torch-backed SDK for PhotoMakerLoader and PhotoMakerEncode (imported inside ``run``).

PhotoMakerEncode, as ComfyUI does it: the word after which the trigger word stands is found by splitting
the text on spaces; the trigger word is dropped from the text before encoding, and the token at the
trigger word's word index (the BOS token counts, so with one token per word it is the class word just
before the trigger) is fused with the first image's ID embedding. Without the trigger word the text is
encoded as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.backend.clip_vision import preprocess
from engine.context import RunContext
from engine.errors import ModelError
from engine.models.handles import ClipHandle, FileRef
from engine.models.photomaker import load_photomaker
from engine.sdk.ops import embedding_lookup, encode_text

__all__ = ["TRIGGER_WORD", "PhotoMakerHandle", "class_token_position", "encode", "photomaker_handle"]

#: ComfyUI's fixed trigger word.
TRIGGER_WORD = "photomaker"
#: Tokens per CLIP chunk: the fused position must fall in the first one.
_CHUNK = 77

Conditioning = list[list[Any]]


@dataclass(frozen=True)
class PhotoMakerHandle:
    """PHOTOMAKER: a PhotoMaker v1 file (the ID encoder is loaded into a small cache on first use)."""

    file: FileRef
    label: str = ""


def photomaker_handle(path: Path) -> PhotoMakerHandle:
    file = FileRef.of(path)
    _, label = load_photomaker(file)
    return PhotoMakerHandle(file, label)


def class_token_position(text: str) -> tuple[str, int | None]:
    """The text without the trigger word, and the token position to fuse (None: no trigger word)."""
    words = text.split(" ")
    if TRIGGER_WORD not in words:
        return text, None
    index = words.index(TRIGGER_WORD)
    return " ".join(words[:index] + words[index + 1:]), index


def encode(ctx: RunContext, handle: PhotoMakerHandle, image: Tensor, clip: ClipHandle, text: str) -> Conditioning:
    """PhotoMakerEncode's CONDITIONING (see the module docstring)."""
    stripped, position = class_token_position(text)
    encoder = ctx.models.text_encoder(clip)
    tokens = encoder.tokenize(stripped, embedding_lookup=embedding_lookup(ctx.folders))
    [[cond, extras]] = encode_text(ctx, clip, tokens)
    if position is None:
        return [[cond, extras]]
    if position >= _CHUNK:
        raise ModelError(f"PhotoMakerEncode text: the trigger word '{TRIGGER_WORD}' is word {position + 1}; it must "
                         f"be within the first {_CHUNK - 1} words")
    model, _ = load_photomaker(handle.file)
    if cond.shape[-1] != model.embed_dim:
        raise ModelError(f"PhotoMakerEncode clip: the text embedding is {cond.shape[-1]} wide but PhotoMaker "
                         f"fuses {model.embed_dim}-wide embeddings; PhotoMaker v1 needs an SDXL CLIP")
    with torch.inference_mode():
        pixels = preprocess(image, size=model.image_size)
        fused = model(cond.float(), pixels, position)
    return [[fused.float().cpu(), extras]]
