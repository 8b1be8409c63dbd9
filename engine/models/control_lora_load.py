"""Control-LoRA files (Stability AI's SDXL control-lora rank files, marked by ``lora_controlnet``):
telling them apart and reading their tensors into a :class:`~engine.backend.control_lora.ControlLora`,
which builds its ControlNet from the sampled model's UNet when sampling starts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.backend.control_lora import CONTROL_LORA_MARKER, ControlLora
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["describe_control_lora", "is_control_lora", "load_control_lora"]

log = logging.getLogger(__name__)


def is_control_lora(path: Path | str) -> bool:
    """Whether the file at ``path`` is a Control-LoRA (has the ``lora_controlnet`` key)."""
    with CheckpointFile(Path(path)) as ckpt:
        return CONTROL_LORA_MARKER in set(ckpt.keys())


def describe_control_lora(path: Path | str) -> str | None:
    """A description of the Control-LoRA at ``path``, or None when the file is not one."""
    with CheckpointFile(Path(path)) as ckpt:
        keys = set(ckpt.keys())
        if CONTROL_LORA_MARKER not in keys:
            return None
        pairs = [k for k in keys if k.endswith(".up")]
        if "input_hint_block.0.weight" not in keys:
            raise UnsupportedModel(f"{Path(path).name} is marked as a Control-LoRA but has no "
                                   "input_hint_block.0.weight; the file may be truncated")
        rank = int(ckpt.shape(pairs[0])[1]) if pairs else 0
    return f"a Control-LoRA (rank {rank}, {len(pairs)} low-rank weights; built from the sampled model's UNet)"


def load_control_lora(path: Path | str, *, device: torch.device, dtype: torch.dtype) -> ControlLora:
    """The Control-LoRA of a file; low-rank pairs stay in float32-compatible form until :meth:`ControlLora.build`."""
    with CheckpointFile(Path(path)) as ckpt:
        state = {key: ckpt.load(key).to(device=device, dtype=dtype) for key in ckpt.keys()}
    try:
        module = ControlLora(state)
    except ValueError as exc:
        raise UnsupportedModel(f"{Path(path).name}: {exc}") from exc
    log.info("loaded Control-LoRA %s: %d full weights, %d low-rank pairs", Path(path).name,
             len(module.full_names), len(module.pair_names))
    return module
