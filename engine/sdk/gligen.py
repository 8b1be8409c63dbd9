"""Torch-backed SDK module for GLIGEN (imported inside ``run`` by nodes/gligen.py).

GLIGENLoader returns :func:`load_gligen`'s model (a frozen :class:`engine.backend.gligen.Gligen`,
cached by file path, size and mtime in :mod:`engine.models.gligen`); GLIGENTextBoxApply calls
:func:`add_text_box`, which stores the box under ``"gligen"`` in each conditioning entry's extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from engine.backend.gligen import GLIGEN_KEY, MAX_OBJECTS, Gligen
from engine.models.gligen import GligenFileError, read_gligen
from engine.models.handles import FileRef

__all__ = ["Gligen", "GligenFileError", "add_text_box", "load_gligen"]


def load_gligen(path: Path) -> Gligen:
    """The GLIGEN model of the file at ``path``."""
    return read_gligen(FileRef.of(path))


def add_text_box(conditioning: list[list[Any]], model: Gligen, pooled: Tensor,
                 box: tuple[int, int, int, int]) -> list[list[Any]]:
    """Each entry with ``(pooled, h, w, y, x)`` (latent pixels) appended to its ``"gligen"`` boxes, as
    ComfyUI's GLIGENTextBoxApply (the entry's earlier boxes are kept; the model is the latest one).

    Raises ValueError when the pooled output's width is not the model's text width or an entry would
    hold more than MAX_OBJECTS boxes."""
    width = int(pooled.shape[-1])
    if width != model.position_net.text_dim:
        raise ValueError(f"the CLIP's pooled output has {width} features but GLIGEN {model.name} takes "
                         f"{model.position_net.text_dim}: use the CLIP of the SD1 checkpoint the GLIGEN was made for")
    out = []
    for embedding, extras in conditioning:
        previous = list(extras[GLIGEN_KEY][2]) if GLIGEN_KEY in extras else []
        if len(previous) >= MAX_OBJECTS:
            raise ValueError(f"the conditioning already holds {len(previous)} GLIGEN boxes; GLIGEN takes at most "
                             f"{MAX_OBJECTS}")
        out.append([embedding, {**extras, GLIGEN_KEY: ("position", model, [*previous, (pooled, *box)])}])
    return out
