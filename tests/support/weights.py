"""Seeded random weights for tiny test models (values of order ``std``, so outputs are far from zero)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def seeded_state(model: nn.Module, seed: int, std: float = 0.05) -> dict[str, Tensor]:
    """Fill every parameter and buffer of ``model`` from ``N(0, std)`` with a seeded generator, in place; return
    its state dict with contiguous tensors (ready for ``save_file``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    return {key: value.contiguous() for key, value in model.eval().state_dict().items()}
