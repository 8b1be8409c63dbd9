"""Reading ControlNet files: which layout a file uses, and its tensors under LDM names.

Layouts read (the facts are in ``shared/reference/comfyui.md`` section 8):

* LDM with prefix, ``control_model.zero_convs.0.0.weight`` (lllyasviel's ``.pth``/``.safetensors``;
  the 1.0 files also hold a whole SD model beside ``control_model.``, which is skipped);
* bare LDM, ``zero_convs.0.0.weight``;
* diffusers ``ControlNetModel``, ``controlnet_cond_embedding.conv_in.weight``: the encoder keys are
  renamed with the UNet table of :mod:`engine.models.convert_diffusers`; ``controlnet_down_blocks.N``
  becomes ``zero_convs.N.0``, ``controlnet_mid_block`` ``middle_block_out.0``, and
  ``controlnet_cond_embedding.{conv_in, blocks.i, conv_out}`` ``input_hint_block.{0, 2 (i + 1), 14}``.

Union ControlNets (ControlNet++ / ProMax) in either layout: their extra keys are named by
:mod:`engine.models.controlnet_union_load`. Refused with a message saying what the file is:
"difference" ControlNets (weights relative to a base model; DiffControlNetLoader loads them through
:mod:`engine.models.diff_controlnet`), Control-LoRAs, T2I-Adapters (read by
:mod:`engine.models.t2i_adapter_load`; :mod:`engine.models.control_models` dispatches) and SD3/Flux
ControlNets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from engine.backend.attention import load_weights
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.models.controlnet_union_load import build_controlnet, union_config, union_names
from engine.models.convert_diffusers import UNetLayout, unet_names
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["CONTROL_PREFIX", "controlnet_names", "controlnet_state_to_ldm", "load_controlnet", "read_controlnet"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTROL_PREFIX = "control_model."
_DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
#: Top-level modules of :class:`ControlNet`; other keys of a bare LDM file are not ControlNet weights.
_LDM_ROOTS = ("time_embed.", "label_emb.", "input_hint_block.", "input_blocks.", "zero_convs.", "middle_block.",
              "middle_block_out.")
_HINT_LAST = 14


def controlnet_names(keys: Iterable[str], source: str) -> dict[str, str]:
    """``{LDM parameter name: key in the file}`` for a ControlNet file's keys; ``source`` (a file name)
    appears in errors. Raises :class:`UnsupportedModel` for files that are not a supported ControlNet."""
    keys = list(keys)
    _refuse_unsupported(set(keys), source)
    union = union_names(keys)  # ControlNet++ / ProMax parts (engine/models/controlnet_union_load.py)
    if union:
        keys = [k for k in keys if k not in set(union.values())]
        return {**_plain_names(keys, source), **union}
    return _plain_names(keys, source)


def _plain_names(keys: list[str], source: str) -> dict[str, str]:
    present = set(keys)
    if _DIFFUSERS_MARKER in present:
        return _diffusers_names(keys, source)
    if f"{CONTROL_PREFIX}zero_convs.0.0.weight" in present:
        return {k[len(CONTROL_PREFIX):]: k for k in keys if k.startswith(CONTROL_PREFIX)}
    if "zero_convs.0.0.weight" in present:
        names = {k: k for k in keys if k.startswith(_LDM_ROOTS)}
        if len(names) != len(keys):
            log.info("%s: ignored %d keys that are not ControlNet weights", source, len(keys) - len(names))
        return names
    sample = ", ".join(sorted(keys)[:5])
    raise UnsupportedModel(f"{source} is not a ControlNet (no control_model.zero_convs.0.0.weight, zero_convs.0.0."
                           f"weight or {_DIFFUSERS_MARKER}); {len(keys)} tensors, e.g. {sample}")


def _refuse_unsupported(keys: set[str], source: str) -> None:
    if "difference" in keys:
        raise UnsupportedModel(f"{source} is a 'difference' ControlNet (its weights are relative to a base model); "
                               "load it with DiffControlNetLoader, giving it the model it was made from")
    if "lora_controlnet" in keys:
        raise UnsupportedModel(f"{source} is a Control-LoRA (rank weights over an SDXL UNet): load it with "
                               "ControlNetLoader, which builds it from the model being sampled")
    if "body.0.in_conv.weight" in keys or any(k.startswith(("body.", "adapter.body.")) for k in keys):
        raise UnsupportedModel(f"{source} is a T2I-Adapter, not a ControlNet: load it with ControlNetLoader")
    if any(k.startswith(("controlnet_blocks.", "controlnet_single_blocks.", "double_blocks.", "pos_embed_input."))
           for k in keys):
        raise UnsupportedModel(f"{source} is a ControlNet for SD3/Flux-style transformer models of a layout Loom "
                               "does not know; Loom runs SD1.x, SD2.x and SDXL ControlNets, diffusers-layout SD3 "
                               "ones and InstantX / XLabs Flux ones")


def _diffusers_names(keys: list[str], source: str) -> dict[str, str]:
    layout = UNetLayout.from_diffusers_keys(keys)
    names = unet_names(layout)
    out: dict[str, str] = {}
    for key in keys:
        try:
            out[_diffusers_key_to_ldm(key, names.to_ldm)] = key
        except KeyError as exc:
            raise UnsupportedModel(f"{source}: diffusers ControlNet key {key!r} has no LDM name ({exc}); "
                                   "the file may be a newer ControlNet variant Loom does not know") from exc
    return out


def _diffusers_key_to_ldm(key: str, unet_to_ldm: Callable[[str], str]) -> str:
    if m := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)", key):
        if m.group(1) == "conv_in":
            index = 0
        elif m.group(1) == "conv_out":
            index = _HINT_LAST
        else:
            index = 2 * (int(m.group(2)) + 1)
        return f"input_hint_block.{index}.{m.group(3)}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    if m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
        return f"middle_block_out.0.{m.group(1)}"
    return unet_to_ldm(key)


def controlnet_state_to_ldm(state_dict: Mapping[str, T], source: str = "state dict") -> dict[str, T]:
    """A ControlNet state dict in any supported layout, renamed to LDM names (no prefix)."""
    return {ldm: state_dict[key] for ldm, key in controlnet_names(state_dict.keys(), source).items()}


def read_controlnet(ckpt: CheckpointFile) -> tuple[ControlNetConfig, dict[str, str]]:
    """The configuration of the ControlNet in ``ckpt`` and its ``{LDM name: file key}`` map (no tensor read)."""
    names = controlnet_names(ckpt.keys(), ckpt.path.name)
    shapes = {ldm: tuple(ckpt.shape(key)) for ldm, key in names.items()}
    try:
        config = ControlNetConfig.from_state_dict(shapes)
        union = union_config(shapes)
    except (ValueError, KeyError, IndexError) as exc:
        raise UnsupportedModel(f"{ckpt.path.name}: ControlNet weights of an unknown structure ({exc})") from exc
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in build_controlnet(config, union).state_dict().items()}
    problem = _shape_problem(expected, shapes)
    if problem:
        raise UnsupportedModel(f"{ckpt.path.name}: not a complete ControlNet of the structure its keys suggest "
                               f"({config.describe()}): {problem}; the file may be truncated or of a variant "
                               "Loom does not know")
    return config, names


def _shape_problem(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str | None:
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"{len(missing)} weights missing, e.g. {', '.join(missing[:3])}"
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        return f"{len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:3])}"
    wrong = [k for k in expected if tuple(found[k]) != tuple(expected[k])]
    if wrong:
        key = wrong[0]
        return f"{key} has shape {tuple(found[key])}, expected {tuple(expected[key])}"
    return None


def load_controlnet(path: Path | str, *, device: torch.device, dtype: torch.dtype) -> ControlNet:
    """Build the ControlNet of a file on the meta device and fill it one tensor at a time."""
    with CheckpointFile(Path(path)) as ckpt:
        config, names = read_controlnet(ckpt)
        union = union_config({ldm: tuple(ckpt.shape(key)) for ldm, key in names.items()})
        with torch.device("meta"):
            model = build_controlnet(config, union)
        load_weights(model, ((ldm, ckpt.load(key)) for ldm, key in names.items()), device=device, dtype=dtype)
    log.info("loaded ControlNet %s: %s", Path(path).name, config.describe())
    return model.requires_grad_(False).eval()
