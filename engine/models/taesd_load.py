"""Read TAESD files (``.safetensors``, or ``.pth`` / ``.pt`` through ``torch.load(weights_only=True)``) into a
:class:`~engine.backend.taesd.TinyAutoencoder`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from engine.backend.taesd import TinyAutoencoder, load_decoder, load_encoder
from engine.errors import ModelError
from engine.vae_approx import TINY_VAES

log = logging.getLogger(__name__)


def read_tiny_weights(path: Path) -> dict[str, Tensor]:
    """A TAESD file's tensors on the CPU (pickles are read with ``weights_only``: no code runs)."""
    if path.suffix.lower() == ".safetensors":
        return load_file(str(path), device="cpu")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path.name} is not a TAESD state dict (expected a mapping of tensors)")
    return {str(k): v for k, v in state.items()}


def load_tiny_vae(tiny: str, decoder: Path | None, encoder: Path | None, *, device: torch.device,
                  dtype: torch.dtype) -> TinyAutoencoder:
    """TAESD ``tiny`` (``taesd`` / ``taesdxl``) from its decoder and/or encoder file, frozen, in ``dtype``."""
    if tiny not in TINY_VAES:
        raise ModelError(f"unknown TAESD {tiny!r}; known: {', '.join(TINY_VAES)}")
    try:
        dec = load_decoder(read_tiny_weights(decoder)) if decoder is not None else None
        enc = load_encoder(read_tiny_weights(encoder)) if encoder is not None else None
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{tiny}: cannot load {decoder or encoder}: {exc}") from exc
    model = TinyAutoencoder(dec, enc, scale=TINY_VAES[tiny])
    log.info("loaded %s (%s)", tiny, ", ".join(p.name for p in (decoder, encoder) if p is not None))
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()
