"""Torch-backed SDK module: alpha compositing and mask editing for the compositing and mask nodes.

A node imports this module inside ``run`` (``from engine.sdk import compositing``), never at module
level, so registering nodes does not load torch. Re-exported from pure-torch modules:

* :mod:`engine.backend.porter_duff`: Porter-Duff operators over IMAGE + MASK pairs, splitting and
  joining an image's alpha channel (transparency travels as a MASK that is 1 where transparent);
* :mod:`engine.backend.mask_ops`: feathering, combining, cropping masks and masks from an exact colour.
"""

from __future__ import annotations

from engine.backend.mask_ops import MASK_OPERATIONS, color_to_mask, crop_mask, feather_mask, mask_composite
from engine.backend.porter_duff import (
    PORTER_DUFF_MODES,
    join_image_with_alpha,
    porter_duff,
    porter_duff_composite,
    split_image_with_alpha,
)

__all__ = [
    "MASK_OPERATIONS", "PORTER_DUFF_MODES", "color_to_mask", "crop_mask", "feather_mask", "join_image_with_alpha",
    "mask_composite", "porter_duff", "porter_duff_composite", "split_image_with_alpha",
]
