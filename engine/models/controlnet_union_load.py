"""Union ControlNet files (ControlNet++ / ProMax): their extra keys and building the net.

xinsir's files are diffusers ControlNets plus ``task_embedding``, ``control_add_embedding.linear_{1,2}``,
``transformer_layes.N.{ln_1, attn.in_proj_weight / in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}`` and ``spatial_ch_projs``; LDM conversions spell the attention input ``attn.in_proj.weight``
and may carry ``control_model.``. These keys get LDM names here; the rest of the file is read as any
ControlNet by :mod:`engine.models.controlnet_convert`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.controlnet_union import UnionConfig, UnionControlNet

__all__ = ["UNION_ROOTS", "build_controlnet", "union_config", "union_names"]

UNION_ROOTS = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")
_PREFIX = "control_model."


def _ldm_name(key: str) -> str | None:
    name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    if not name.startswith(UNION_ROOTS):
        return None
    return name.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(
        ".attn.in_proj_bias", ".attn.in_proj.bias")


def union_names(keys: Iterable[str]) -> dict[str, str]:
    """``{LDM name: file key}`` of a file's union keys (empty for an ordinary ControlNet)."""
    out: dict[str, str] = {}
    for key in keys:
        name = _ldm_name(key)
        if name is not None:
            out[name] = key
    return out


def union_config(shapes: Mapping[str, tuple[int, ...]]) -> UnionConfig | None:
    """The union sizes from LDM-named shapes, or None when the file has no union parts."""
    if "task_embedding" not in shapes:
        return None
    return UnionConfig.from_shapes(dict(shapes))


def build_controlnet(config: ControlNetConfig, union: UnionConfig | None) -> ControlNet:
    """A ControlNet module (in the current default device, e.g. meta) for the config and union parts."""
    return ControlNet(config) if union is None else UnionControlNet(config, union)
