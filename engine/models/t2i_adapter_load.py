"""Reading T2I-Adapter files (ControlNetLoader takes them, as ComfyUI does, telling them by their keys).

Layouts: the original (TencentARC) names :class:`~engine.backend.t2i_adapter.T2IAdapter` uses, full
(``conv_in.weight``, ``body.N.block1``) or light (``body.N.in_conv``, ``body.N.body.M.block1``,
``body.N.out_conv``); and diffusers' ``T2IAdapter`` (``adapter.conv_in``, ``adapter.body.I.resnets.J``),
renamed on reading: a full adapter's ``adapter.body.I.resnets.J.`` becomes ``body.{2 I + J}.`` and
``adapter.body.I.in_conv`` ``body.{2 I}.in_conv``; a light one's ``resnets`` become ``body``.

The structure is inferred from shapes as ComfyUI does: a full adapter has two blocks per stage, its
stage widths are its blocks' widths, an input width (``cin``) of 256 or 768 means SDXL (16x unshuffle);
``down_opt.op`` convs mean strided-conv downsampling.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from engine.backend.attention import load_weights
from engine.backend.t2i_adapter import T2IAdapter, T2IAdapterConfig
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["adapter_config", "adapter_names", "is_t2i_adapter", "load_t2i_adapter", "read_t2i_adapter"]

log = logging.getLogger(__name__)

_FULL_BLOCKS = 2
_XL_CIN = (256, 768)


def is_t2i_adapter(keys: Iterable[str]) -> bool:
    """Whether a file's keys are a T2I-Adapter's (either layout, full or light)."""
    present = set(keys)
    return bool({"conv_in.weight", "body.0.in_conv.weight", "adapter.conv_in.weight",
                 "adapter.body.0.in_conv.weight"} & present) and any(
        k.startswith(("body.0.", "adapter.body.0.")) for k in present)


def _diffusers_name(key: str, light: bool) -> str:
    rest = key.removeprefix("adapter.")
    if m := re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        stage, block, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"body.{stage}.body.{block}.{tail}" if light else f"body.{stage * _FULL_BLOCKS + block}.{tail}"
    if not light and (m := re.fullmatch(r"body\.(\d+)\.(in_conv\..+)", rest)):
        return f"body.{int(m.group(1)) * _FULL_BLOCKS}.{m.group(2)}"
    return rest


def adapter_names(keys: Iterable[str]) -> dict[str, str]:
    """``{original name: file key}`` for an adapter file's keys (see the module docstring)."""
    keys = list(keys)
    if not any(k.startswith("adapter.") for k in keys):
        return {k: k for k in keys}
    light = "adapter.conv_in.weight" not in keys
    return {_diffusers_name(k, light): k for k in keys if k.startswith("adapter.")}


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    return sum(1 for k in shapes if re.fullmatch(pattern, k))


def adapter_config(shapes: Mapping[str, tuple[int, ...]]) -> T2IAdapterConfig:
    """The structure of an adapter from its original names and shapes (ValueError when none fits)."""
    if "conv_in.weight" not in shapes:
        stages = _count(shapes, r"body\.\d+\.out_conv\.weight")
        channels = tuple(shapes[f"body.{i}.out_conv.weight"][0] for i in range(stages))
        blocks = _count(shapes, r"body\.0\.body\.\d+\.block1\.weight")
        return T2IAdapterConfig("light", shapes["body.0.in_conv.weight"][1], channels, blocks)
    total = _count(shapes, r"body\.\d+\.block1\.weight")
    if total == 0 or total % _FULL_BLOCKS:
        raise ValueError(f"{total} residual blocks, not a multiple of {_FULL_BLOCKS}")
    channels = tuple(shapes[f"body.{i * _FULL_BLOCKS}.block1.weight"][0] for i in range(total // _FULL_BLOCKS))
    cin = shapes["conv_in.weight"][1]
    return T2IAdapterConfig("full", cin, channels, _FULL_BLOCKS, xl=cin in _XL_CIN,
                            kernel=shapes["body.0.block2.weight"][2],
                            conv_down=any(k.endswith("down_opt.op.weight") for k in shapes))


def _shape_problem(config: T2IAdapterConfig, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in T2IAdapter(config).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if missing or unexpected or wrong:
        return (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
    return None


def read_t2i_adapter(ckpt: CheckpointFile) -> tuple[T2IAdapterConfig, dict[str, str]]:
    """The configuration of the adapter in ``ckpt`` and its ``{name: file key}`` map (no tensor read)."""
    names = adapter_names(ckpt.keys())
    shapes = {name: tuple(ckpt.shape(key)) for name, key in names.items()}
    try:
        config = adapter_config(shapes)
    except (KeyError, IndexError, ValueError) as exc:
        raise UnsupportedModel(f"{ckpt.path.name}: T2I-Adapter weights of an unknown structure ({exc})") from exc
    problem = _shape_problem(config, shapes)
    if problem:
        raise UnsupportedModel(f"{ckpt.path.name}: not a complete T2I-Adapter ({config.describe()}): {problem}")
    return config, names


def load_t2i_adapter(path: Path | str, *, device: torch.device, dtype: torch.dtype) -> T2IAdapter:
    """Build the adapter of a file on the meta device and fill it one tensor at a time."""
    with CheckpointFile(Path(path)) as ckpt:
        config, names = read_t2i_adapter(ckpt)
        with torch.device("meta"):
            model = T2IAdapter(config)
        load_weights(model, ((name, ckpt.load(key)) for name, key in names.items()), device=device, dtype=dtype)
    log.info("loaded T2I-Adapter %s: %s", Path(path).name, config.describe())
    return model.requires_grad_(False).eval()
