"""Edits of CONDITIONING values that nodes make (ConditioningConcat, ConditioningZeroOut,
ConditioningAverage): ComfyUI's list of ``[embedding [B, T, D], extras]`` in, a new list out.
What sampling does with the entries lives in :mod:`engine.backend.conditioning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def concat_tokens(conditioning_to: Sequence[Sequence[Any]], source: Tensor) -> list[list[Any]]:
    """Every entry of ``conditioning_to`` with ``source``'s tokens appended (ConditioningConcat)."""
    return [[torch.cat([cond, source], dim=1), dict(extras)] for cond, extras in conditioning_to]


def zeroed(conditioning: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The conditioning with its embeddings and pooled outputs set to zero (ConditioningZeroOut)."""
    out: list[list[Any]] = []
    for cond, extras in conditioning:
        extras = dict(extras)
        if extras.get("pooled_output") is not None:
            extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
        out.append([torch.zeros_like(cond), extras])
    return out


def average(conditioning_to: Sequence[Sequence[Any]], source: Sequence[Any], to_strength: float) -> list[list[Any]]:
    """Every entry of ``conditioning_to`` blended with ``source`` = ``[embedding, extras]`` (ConditioningAverage).

    ``to * s + from * (1 - s)`` token by token, the source cut or zero-padded to each entry's length;
    the pooled outputs blend the same way, an entry without one taking the source's.
    """
    cond_from, pooled_from = source[0], source[1].get("pooled_output")
    out: list[list[Any]] = []
    for cond, extras in conditioning_to:
        tokens = cond_from[:, :cond.shape[1]].to(cond)
        if tokens.shape[1] < cond.shape[1]:
            pad = cond.new_zeros((tokens.shape[0], cond.shape[1] - tokens.shape[1], cond.shape[2]))
            tokens = torch.cat([tokens, pad], dim=1)
        extras = dict(extras)
        pooled_to = extras.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            extras["pooled_output"] = pooled_to * to_strength + pooled_from * (1.0 - to_strength)
        elif pooled_from is not None:
            extras["pooled_output"] = pooled_from
        out.append([cond * to_strength + tokens * (1.0 - to_strength), extras])
    return out
