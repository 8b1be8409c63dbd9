"""Tiny random ESRGAN (RRDBNet) upscalers for the tests, in the key layouts real files use.

spandrel's own ESRGAN class makes the state dict in the old ESRGAN layout (``model.0.weight``,
``model.1.sub.N.RDB1.conv1.0.weight``, ...); :func:`to_new_layout` renames a 4x one to the layout of
Real-ESRGAN's RRDBNet (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``, ``conv_up1``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.models.upscale import import_spandrel


def tiny_esrgan_state_dict(scale: int = 2, nf: int = 8, blocks: int = 1, seed: int = 0) -> dict[str, Tensor]:
    """A random RRDBNet's weights in the old ESRGAN key layout."""
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=nf, num_blocks=blocks, scale=scale)
    for parameter in net.parameters():  # larger than the default init, so the output is not flat grey
        parameter.data.mul_(3.0)
    return {key: value.contiguous() for key, value in net.state_dict().items()}


def to_new_layout(state_dict: dict[str, Tensor], blocks: int) -> dict[str, Tensor]:
    """A 4x old-layout RRDBNet state dict renamed to Real-ESRGAN's RRDBNet key layout."""
    fixed = {"model.0": "conv_first", f"model.1.sub.{blocks}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    renamed = {}
    for key, value in state_dict.items():
        stem, kind = key.rsplit(".", 1)
        block = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0", stem)
        if block:
            new = f"body.{block[1]}.rdb{block[2]}.conv{block[3]}"
        else:
            new = fixed[stem]
        renamed[f"{new}.{kind}"] = value
    return renamed


def save_model(state_dict: dict[str, Tensor], path: Path) -> Path:
    """Write ``state_dict`` as .safetensors or (any other ending) a torch.save pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, str(path))
    return path
