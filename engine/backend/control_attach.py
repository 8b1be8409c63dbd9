"""Attaching a ControlNet to conditioning: what ControlNetApply(Advanced) hand over.

Each CONDITIONING entry gets a :class:`~engine.backend.control_apply.ControlSpec` under
``"control"``, chained onto the spec that was there before; nothing is loaded or run until a
sampler needs it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from engine.backend.control_apply import ControlSpec

__all__ = ["Conditioning", "attach_control"]

Conditioning = list[list[Any]]


def attach_control(conditioning: Conditioning, control_net: Any, image: Tensor, strength: float,
                   start_percent: float, end_percent: float, apply_to_uncond: bool,
                   shared: dict[int, ControlSpec], vae: Any = None) -> Conditioning:
    """A copy of ``conditioning`` whose entries carry a ControlSpec chained onto their previous one.

    ``control_net`` is a CONTROL_NET handle (its ``global_average_pooling`` is copied to the spec);
    ``image`` is an IMAGE ``[B, H, W, C]``. ``shared`` maps ``id(previous spec)`` to the new spec, so
    entries (also across the positive and negative lists) that had the same previous spec share one
    new spec and run the net once per step. ``vae`` (pixels -> latents) encodes the hint of SD3/Flux ControlNets.
    """
    hint = image.movedim(-1, 1)
    out: Conditioning = []
    for embedding, extras in conditioning:
        previous = extras.get("control")
        spec = shared.get(id(previous))
        if spec is None:
            spec = ControlSpec(control_net, hint, strength, start_percent, end_percent, previous,
                               control_net.global_average_pooling, vae)
            shared[id(previous)] = spec
        out.append([embedding, {**extras, "control": spec, "control_apply_to_uncond": apply_to_uncond}])
    return out
