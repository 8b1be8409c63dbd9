"""Difference ControlNets (DiffControlNetLoader): files whose weights are stored relative to a base model.

Such a file holds a ``difference`` marker tensor beside LDM ControlNet keys (``control_model.`` or bare);
as ComfyUI does, each weight whose name the base UNet shares (``time_embed``, ``input_blocks``,
``middle_block``, ``label_emb``) gets the base UNet's weight added at load; the others (hint block,
zero convs) are used as stored. The sum is taken in float32 and then cast to the compute dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from engine.backend.attention import load_weights
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.models import parts
from engine.models.controlnet_convert import controlnet_names
from engine.models.handles import KeyLayout
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["DIFFERENCE_KEY", "is_difference_file", "load_diff_controlnet"]

log = logging.getLogger(__name__)

DIFFERENCE_KEY = "difference"


def is_difference_file(path: Path | str) -> bool:
    """Whether the file at ``path`` is a difference ControlNet (it holds a ``difference`` tensor)."""
    with CheckpointFile(Path(path)) as ckpt:
        return DIFFERENCE_KEY in ckpt.keys()


def _base_tensors(base: CheckpointFile, layout: KeyLayout, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The base UNet's tensors (float32) for the ``wanted`` LDM names it has."""
    if layout.naming == "ldm":
        present = set(base.keys())
        return {name: base.load(layout.prefix + name, torch.float32)
                for name in wanted if layout.prefix + name in present}
    return {name: tensor.float() for name, tensor in parts.unet_tensors(base, layout) if name in wanted}


def load_diff_controlnet(path: Path | str, base_path: Path | str, base_layout: KeyLayout, *,
                         device: torch.device, dtype: torch.dtype) -> ControlNet:
    """The full ControlNet of the difference file at ``path`` over the UNet of ``base_path``."""
    path = Path(path)
    with CheckpointFile(path) as ckpt:
        keys = [k for k in ckpt.keys() if k != DIFFERENCE_KEY]
        if len(keys) == len(ckpt.keys()):
            log.info("%s holds no 'difference' tensor: loaded as a full ControlNet", path.name)
        names = controlnet_names(keys, path.name)
        try:
            config = ControlNetConfig.from_state_dict({ldm: tuple(ckpt.shape(key)) for ldm, key in names.items()})
        except (ValueError, KeyError, IndexError) as exc:
            raise UnsupportedModel(f"{path.name}: ControlNet weights of an unknown structure ({exc})") from exc
        with CheckpointFile(Path(base_path)) as base:
            offsets = _base_tensors(base, base_layout, set(names)) if len(keys) < len(ckpt.keys()) else {}

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for ldm, key in names.items():
                offset = offsets.get(ldm)
                if offset is not None and tuple(offset.shape) == tuple(ckpt.shape(key)):
                    yield ldm, ckpt.load(key, torch.float32) + offset
                else:
                    yield ldm, ckpt.load(key)

        with torch.device("meta"):
            model = ControlNet(config)
        load_weights(model, tensors(), device=device, dtype=dtype)
    log.info("loaded difference ControlNet %s over %s (%d weights offset): %s", path.name, Path(base_path).name,
             len(offsets), config.describe())
    return model.requires_grad_(False).eval()
