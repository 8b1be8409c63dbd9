"""Edits of a SIGMAS schedule (a decreasing 1-D float tensor, usually ending in 0), with ComfyUI's
semantics: split, flip, set the first sigma, insert intermediate sigmas."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: ExtendIntermediateSigmas' spacings: where, between two sigmas, the inserted ones go (0..1).
SPACINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def split_sigmas(sigmas: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """(sigmas[:step + 1], sigmas[step:]): the two share the sigma at ``step``."""
    return sigmas[:step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: Tensor, denoise: float) -> tuple[Tensor, Tensor]:
    """Split so that the low part has the last round(steps * denoise) steps (steps = len - 1).

    The high part is everything before the low part's steps, ``sigmas[:-k]``; as in ComfyUI, k = 0
    gives an empty high part (Python's ``[:-0]``) and a low part of the last sigma alone.
    """
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    return sigmas[:-low_steps], sigmas[-(low_steps + 1):]


def flip_sigmas(sigmas: Tensor) -> Tensor:
    """The schedule reversed (for unsampling); a leading 0 becomes 0.0001 so the first step is defined."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: Tensor, sigma: float) -> Tensor:
    """A copy with the first sigma replaced."""
    out = sigmas.clone()
    out[0] = sigma
    return out


def extend_intermediate_sigmas(sigmas: Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                               spacing: str) -> Tensor:
    """Insert ``steps - 1`` sigmas between each pair whose first sigma lies in [end_at_sigma,
    start_at_sigma] (a negative start means no upper bound), placed by ``spacing`` (linear, cosine,
    sine) from the first sigma towards the next. Returns float32 on the CPU."""
    try:
        spread = SPACINGS[spacing]
    except KeyError:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}") from None
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = spread(torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
    values: list[float] = []
    for current, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        values.append(float(current))
        if end_at_sigma <= float(current) <= upper:
            values.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        values.append(float(sigmas[-1]))
    return torch.tensor(values, dtype=torch.float32)
