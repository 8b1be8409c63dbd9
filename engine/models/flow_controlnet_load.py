"""Recognising and loading SD3/SD3.5 and Flux.1 ControlNet files (the nets of engine/backend/mmdit_controlnet.py
and engine/backend/flux_controlnet.py).

Told apart by their keys, in ComfyUI's order (every such file has ``controlnet_blocks.0.weight``):

* XLabs Flux (``x-flux``): Flux single-file names (``double_blocks.0.img_attn.norm.key_norm.scale``) plus
  ``input_hint_block`` and ``pos_embed_input``: read as they are;
* SD3 (InstantX and others, diffusers' ``SD3ControlNetModel``): ``pos_embed_input.proj.weight``; renamed to the
  MMDiT's single-file names (``transformer_blocks.N.attn.to_q/k/v`` stacked into ``joint_blocks.N.x_block.attn.qkv``,
  ...). Stability's own SD3.5 ControlNets (``transformer_blocks.0.adaLN_modulation.1.bias``) are refused;
* InstantX Flux (diffusers' ``FluxControlNetModel``, also the Union / "Pro" nets): ``controlnet_x_embedder.weight``;
  renamed to Flux's single-file names, ``controlnet_x_embedder`` to ``pos_embed_input``.

Mistoline's Flux ControlNet (``controlnet_blocks.0.linear.weight``) is refused with a message saying so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.backend.attention import load_weights
from engine.backend.flux import flux_config_from_state_dict
from engine.backend.flux_controlnet import FluxControlNet, FluxControlNetConfig
from engine.backend.mmdit import mmdit_config_from_state_dict
from engine.backend.mmdit_controlnet import SD3ControlNet, SD3ControlNetConfig
from engine.models.flow_models import flux_axes
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["FlowControlNet", "describe_flow_controlnet", "flow_controlnet_kind", "load_flow_controlnet",
           "read_flow_controlnet"]

log = logging.getLogger(__name__)

FlowControlNet = SD3ControlNet | FluxControlNet
FlowControlNetConfig = SD3ControlNetConfig | FluxControlNetConfig
#: ``{Loom parameter name: the file keys stacked (dim 0, in order) to make it}``.
Plan = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class _Rule:
    """Diffusers keys matching ``pattern`` become ``target`` (a ``re`` template); a rule with ``order`` stacks the
    keys whose ``part`` group takes each of those values, in that order."""

    pattern: str
    target: str
    order: tuple[str, ...] = ()


_QKV = ("q", "k", "v")
_W = r"(?P<p>weight|bias)"
#: (pattern, target, stacked parts) inside one block: ``transformer_blocks.N.`` -> ``joint_blocks.N.`` (SD3).
_JOINT_BLOCK = (
    (rf"attn\.to_(?P<part>[qkv])\.{_W}", r"x_block.attn.qkv.\g<p>", _QKV),
    (rf"attn\.add_(?P<part>[qkv])_proj\.{_W}", r"context_block.attn.qkv.\g<p>", _QKV),
    (rf"attn2\.to_(?P<part>[qkv])\.{_W}", r"x_block.attn2.qkv.\g<p>", _QKV),
    (r"attn\.norm_(?P<q>[qk])\.weight", r"x_block.attn.ln_\g<q>.weight", ()),
    (r"attn\.norm_added_(?P<q>[qk])\.weight", r"context_block.attn.ln_\g<q>.weight", ()),
    (r"attn2\.norm_(?P<q>[qk])\.weight", r"x_block.attn2.ln_\g<q>.weight", ()),
    (rf"attn\.to_out\.0\.{_W}", r"x_block.attn.proj.\g<p>", ()),
    (rf"attn2\.to_out\.0\.{_W}", r"x_block.attn2.proj.\g<p>", ()),
    (rf"attn\.to_add_out\.{_W}", r"context_block.attn.proj.\g<p>", ()),
    (rf"norm1\.linear\.{_W}", r"x_block.adaLN_modulation.1.\g<p>", ()),
    (rf"norm1_context\.linear\.{_W}", r"context_block.adaLN_modulation.1.\g<p>", ()),
    (rf"ff\.net\.0\.proj\.{_W}", r"x_block.mlp.fc1.\g<p>", ()),
    (rf"ff\.net\.2\.{_W}", r"x_block.mlp.fc2.\g<p>", ()),
    (rf"ff_context\.net\.0\.proj\.{_W}", r"context_block.mlp.fc1.\g<p>", ()),
    (rf"ff_context\.net\.2\.{_W}", r"context_block.mlp.fc2.\g<p>", ()),
)
#: ``transformer_blocks.N.`` -> ``double_blocks.N.`` (Flux).
_DOUBLE_BLOCK = (
    (rf"norm1\.linear\.{_W}", r"img_mod.lin.\g<p>", ()),
    (rf"norm1_context\.linear\.{_W}", r"txt_mod.lin.\g<p>", ()),
    (rf"attn\.to_(?P<part>[qkv])\.{_W}", r"img_attn.qkv.\g<p>", _QKV),
    (rf"attn\.add_(?P<part>[qkv])_proj\.{_W}", r"txt_attn.qkv.\g<p>", _QKV),
    (r"attn\.norm_q\.weight", "img_attn.norm.query_norm.scale", ()),
    (r"attn\.norm_k\.weight", "img_attn.norm.key_norm.scale", ()),
    (r"attn\.norm_added_q\.weight", "txt_attn.norm.query_norm.scale", ()),
    (r"attn\.norm_added_k\.weight", "txt_attn.norm.key_norm.scale", ()),
    (rf"attn\.to_out\.0\.{_W}", r"img_attn.proj.\g<p>", ()),
    (rf"attn\.to_add_out\.{_W}", r"txt_attn.proj.\g<p>", ()),
    (rf"ff\.net\.0\.proj\.{_W}", r"img_mlp.0.\g<p>", ()),
    (rf"ff\.net\.2\.{_W}", r"img_mlp.2.\g<p>", ()),
    (rf"ff_context\.net\.0\.proj\.{_W}", r"txt_mlp.0.\g<p>", ()),
    (rf"ff_context\.net\.2\.{_W}", r"txt_mlp.2.\g<p>", ()),
)
#: ``single_transformer_blocks.N.`` -> ``single_blocks.N.`` (Flux): q, k, v and the MLP input stack into linear1.
_SINGLE_BLOCK = (
    (rf"norm\.linear\.{_W}", r"modulation.lin.\g<p>", ()),
    (rf"(?P<part>attn\.to_[qkv]|proj_mlp)\.{_W}", r"linear1.\g<p>",
     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    (r"attn\.norm_q\.weight", "norm.query_norm.scale", ()),
    (r"attn\.norm_k\.weight", "norm.key_norm.scale", ()),
    (rf"proj_out\.{_W}", r"linear2.\g<p>", ()),
)


def _in_blocks(source: str, target: str, rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> tuple[_Rule, ...]:
    return tuple(_Rule(rf"{source}\.(?P<b>\d+)\.{pattern}", rf"{target}.\g<b>.{name}", order)
                 for pattern, name, order in rules)


_SD3_RULES = (
    _Rule(r"pos_embed\.pos_embed", "pos_embed"),
    _Rule(rf"pos_embed\.proj\.{_W}", r"x_embedder.proj.\g<p>"),
    *(_Rule(rf"time_text_embed\.{theirs}_embedder\.linear_{n}\.{_W}", rf"{ours}.mlp.{layer}.\g<p>")
      for theirs, ours in (("timestep", "t_embedder"), ("text", "y_embedder")) for n, layer in ((1, 0), (2, 2))),
    _Rule(rf"(?P<k>context_embedder|controlnet_blocks\.\d+|pos_embed_input\.proj)\.{_W}", r"\g<k>.\g<p>"),
    *_in_blocks("transformer_blocks", "joint_blocks", _JOINT_BLOCK),
)
_FLUX_RULES = (
    _Rule(rf"x_embedder\.{_W}", r"img_in.\g<p>"),
    _Rule(rf"context_embedder\.{_W}", r"txt_in.\g<p>"),
    _Rule(rf"controlnet_x_embedder\.{_W}", r"pos_embed_input.\g<p>"),
    *(_Rule(rf"time_text_embed\.{theirs}_embedder\.linear_{n}\.{_W}", rf"{ours}.{layer}.\g<p>")
      for theirs, ours in (("timestep", "time_in"), ("guidance", "guidance_in"), ("text", "vector_in"))
      for n, layer in ((1, "in_layer"), (2, "out_layer"))),
    *_in_blocks("transformer_blocks", "double_blocks", _DOUBLE_BLOCK),
    *_in_blocks("single_transformer_blocks", "single_blocks", _SINGLE_BLOCK),
    _Rule(rf"(?P<k>controlnet_blocks\.\d+|controlnet_single_blocks\.\d+)\.{_W}", r"\g<k>.\g<p>"),
    _Rule(r"controlnet_mode_embedder\.weight", "controlnet_mode_embedder.weight"),
)
_XLABS_RULES = (_Rule(r".+", r"\g<0>"),)
_RULES = {"sd3": _SD3_RULES, "flux_instantx": _FLUX_RULES, "flux_xlabs": _XLABS_RULES}


def flow_controlnet_kind(keys: Iterable[str], source: str) -> str | None:
    """``"sd3"``, ``"flux_instantx"`` or ``"flux_xlabs"`` for an SD3/Flux ControlNet file's keys, None for any other
    file; UnsupportedModel naming ``source`` for SD3/Flux ControlNet kinds Loom does not run."""
    names = set(keys)
    if "controlnet_blocks.0.linear.weight" in names:
        raise UnsupportedModel(f"{source} is a Mistoline Flux ControlNet, which Loom does not run yet; use an "
                               "InstantX or XLabs Flux ControlNet")
    if "controlnet_blocks.0.weight" not in names:
        return None
    if "double_blocks.0.img_attn.norm.key_norm.scale" in names:
        return "flux_xlabs"
    if "pos_embed_input.proj.weight" in names:
        if "transformer_blocks.0.adaLN_modulation.1.bias" in names or "context_embedder.weight" not in names:
            raise UnsupportedModel(f"{source} is one of Stability's SD3.5 ControlNets (blur/canny/depth), which Loom "
                                   "does not run yet; use an SD3 ControlNet in diffusers' layout (e.g. InstantX's)")
        return "sd3"
    if "controlnet_x_embedder.weight" in names:
        return "flux_instantx"
    return None


def _plan(keys: Iterable[str], rules: tuple[_Rule, ...], source: str) -> Plan:
    plan: Plan = {}
    stacks: dict[str, tuple[_Rule, dict[str, str]]] = {}
    for key in keys:
        rule, match = next(((r, m) for r in rules if (m := re.fullmatch(r.pattern, key))), (None, None))
        if rule is None or match is None:
            raise UnsupportedModel(f"{source}: ControlNet key {key!r} has no place in Loom's SD3/Flux ControlNets; "
                                   "the file may be a variant Loom does not know")
        target = match.expand(rule.target)
        if rule.order:
            stacks.setdefault(target, (rule, {}))[1][match.group("part")] = key
        else:
            plan[target] = (key,)
    for target, (rule, parts) in stacks.items():
        missing = [part for part in rule.order if part not in parts]
        if missing:
            raise UnsupportedModel(f"{source}: {target} lacks its {', '.join(missing)} part(s); the file is incomplete")
        plan[target] = tuple(parts[part] for part in rule.order)
    return plan


def _stacked_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _config(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> FlowControlNetConfig:
    """The net's configuration from Loom-named shapes. The transformers' config readers want a final layer, which
    ControlNets lack: it is given the latent's width."""
    if kind == "sd3":
        p, latent = shapes["x_embedder.proj.weight"][2], shapes["x_embedder.proj.weight"][1]
        final = (p * p * latent, shapes["x_embedder.proj.weight"][0])
        mmdit = mmdit_config_from_state_dict({**shapes, "final_layer.linear.weight": final}, "")
        return SD3ControlNetConfig(mmdit, shapes["pos_embed_input.proj.weight"][1])
    hidden, in_channels = shapes["img_in.weight"]
    head = shapes.get("double_blocks.0.img_attn.norm.query_norm.scale",
                      shapes.get("single_blocks.0.norm.query_norm.scale", (128,)))[0]
    flux = flux_config_from_state_dict({**shapes, "final_layer.linear.weight": (in_channels, hidden)}, "",
                                       axes_dim=flux_axes(head))
    modes = shapes.get("controlnet_mode_embedder.weight", (0,))[0]
    return FluxControlNetConfig(flux, shapes["pos_embed_input.weight"][1], modes, kind == "flux_xlabs")


def _build(config: FlowControlNetConfig) -> FlowControlNet:
    with torch.device("meta"):
        return SD3ControlNet(config) if isinstance(config, SD3ControlNetConfig) else FluxControlNet(config)


def _shape_problem(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str | None:
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        return f"{len(missing)} weights missing, e.g. {', '.join(missing[:3])}"
    if unexpected:
        return f"{len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:3])}"
    wrong = next((k for k in expected if tuple(found[k]) != tuple(expected[k])), None)
    return None if wrong is None else f"{wrong} has shape {tuple(found[wrong])}, expected {expected[wrong]}"


def read_flow_controlnet(ckpt: CheckpointFile) -> tuple[FlowControlNetConfig, Plan] | None:
    """The configuration and the loading plan of the SD3/Flux ControlNet in ``ckpt`` (no tensor read), or None when
    the file is not one; UnsupportedModel for kinds Loom does not run and incomplete files."""
    source = ckpt.path.name
    kind = flow_controlnet_kind(ckpt.keys(), source)
    if kind is None:
        return None
    plan = _plan(ckpt.keys(), _RULES[kind], source)
    shapes = {name: _stacked_shape([tuple(ckpt.shape(key)) for key in keys]) for name, keys in plan.items()}
    try:
        config = _config(kind, shapes)
    except (ValueError, KeyError, IndexError) as exc:
        raise UnsupportedModel(f"{source}: an SD3/Flux ControlNet of an unknown structure ({exc})") from exc
    expected = {name: tuple(t.shape) for name, t in _build(config).state_dict().items()}
    problem = _shape_problem(expected, shapes)
    if problem:
        raise UnsupportedModel(f"{source}: not a complete ControlNet of the structure its keys suggest "
                               f"({config.describe()}): {problem}")
    return config, plan


def describe_flow_controlnet(ckpt: CheckpointFile) -> str | None:
    """What SD3/Flux ControlNet ``ckpt`` holds (None: not one)."""
    found = read_flow_controlnet(ckpt)
    return None if found is None else found[0].describe()


def _tensors(ckpt: CheckpointFile, plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
    for name, keys in plan.items():
        yield name, ckpt.load(keys[0]) if len(keys) == 1 else torch.cat([ckpt.load(key) for key in keys])


def load_flow_controlnet(path: Path | str, *, device: torch.device, dtype: torch.dtype) -> FlowControlNet:
    """The SD3/Flux ControlNet of a file, built on the meta device and filled one tensor at a time."""
    with CheckpointFile(Path(path)) as ckpt:
        found = read_flow_controlnet(ckpt)
        if found is None:
            raise UnsupportedModel(f"{Path(path).name} is not an SD3 or Flux ControlNet")
        config, plan = found
        model = _build(config)
        load_weights(model, _tensors(ckpt, plan), device=device, dtype=dtype)
    log.info("loaded ControlNet %s: %s", Path(path).name, config.describe())
    return model.requires_grad_(False).eval()
