"""``comfy.samplers``: the sampler and scheduler names Loom implements, where packs read them for combo inputs.

``KSampler.SAMPLERS`` / ``KSampler.SCHEDULERS`` and the module's ``SAMPLER_NAMES``, ``KSAMPLER_NAMES`` and
``SCHEDULER_NAMES`` are fresh lists of :mod:`engine.backend.names` (ComfyUI's names and order); a pack appending
to them changes no Loom list. ComfyUI's sampling objects are not provided: making a ``KSampler`` raises
NotImplementedError saying what to use instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine.backend.names import SAMPLER_NAMES as _SAMPLERS
from engine.backend.names import SCHEDULER_NAMES as _SCHEDULERS

__all__ = ["KSAMPLER_NAMES", "SAMPLER_NAMES", "SCHEDULER_NAMES", "KSampler"]

#: Every sampler name, in ComfyUI's combo order.
SAMPLER_NAMES: list[str] = list(_SAMPLERS)
#: The k-diffusion samplers (ComfyUI's name for the list without ddim and the uni_pc pair).
KSAMPLER_NAMES: list[str] = [name for name in _SAMPLERS if name not in ("ddim", "uni_pc", "uni_pc_bh2")]
#: Every scheduler name.
SCHEDULER_NAMES: list[str] = list(_SCHEDULERS)


class KSampler:
    """Holds ComfyUI's ``SAMPLERS`` and ``SCHEDULERS`` lists; Loom samples through its own KSampler node."""

    SAMPLERS: ClassVar[list[str]] = SAMPLER_NAMES
    SCHEDULERS: ClassVar[list[str]] = SCHEDULER_NAMES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("comfy.samplers.KSampler objects are not available in Loom; sample with "
                                  "the KSampler or KSamplerAdvanced node instead")
