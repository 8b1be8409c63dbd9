"""Which LoRA key names mean which weight of Loom's SD3/SD3.5 MMDiT and Flux.1 transformers.

Module paths ``P`` are the single-file checkpoint names without ``model.diffusion_model.``
(engine/backend/mmdit.py, engine/backend/flux.py). Every module with weights answers to:

* ``lora_unet_{P with _}`` — kohya (sd-scripts) SD3 and Flux LoRAs (``lora_unet_double_blocks_0_img_attn_qkv``);
* ``diffusion_model.P``, ``model.diffusion_model.P`` and ``P`` — checkpoint-name LoRAs (ComfyUI, BFL);
  Flux also ``diffusion_model.single_blocks.N.linear1_qkv`` for the q, k, v rows of ``linear1``.

diffusers names ``D`` (``transformer_blocks.0.attn.to_q``, ``single_transformer_blocks.0.proj_mlp``, ...)
are spelled ``transformer.D`` (diffusers / PEFT / ai-toolkit / SimpleTuner), ``base_model.model.D``,
``D`` (DiffSynth), ``lora_transformer_{D with _}`` (OneTrainer, kohya's diffusers-style names) and
``lycoris_{D with _}`` (LyCORIS). Several of them address part of a fused checkpoint weight; those
resolve to a :class:`RowTarget`, a block of rows:

* SD3: ``attn.to_q/k/v`` -> rows 0, h, 2h (h rows each) of ``x_block.attn.qkv``; ``attn.add_{q,k,v}_proj``
  -> ``context_block.attn.qkv``; SD3.5 medium ``attn2.to_q/k/v`` -> ``x_block.attn2.qkv``;
* Flux: ``attn.to_q/k/v`` of a double block -> ``img_attn.qkv``, ``attn.add_{q,k,v}_proj`` -> ``txt_attn.qkv``;
  of a single block -> rows 0, h, 2h of ``linear1`` and ``proj_mlp`` -> its last ``mlp_hidden`` rows;
* ``norm_out.linear`` (both) and SD3's last ``norm1_context.linear`` (the pre-only context block) hold
  (scale, shift) where the checkpoint holds (shift, scale): their delta's halves are swapped.

SD3's last joint block has a pre-only context stream: no ``attn.to_add_out`` / ``ff_context`` there.
The name facts follow ComfyUI's published key tables (``mmdit_to_diffusers`` / ``flux_to_diffusers``)
and diffusers' module names; this file was written from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from engine.backend.flux import FluxConfig
from engine.backend.mmdit import MMDiTConfig
from engine.models.lora_formats import RowBlock

__all__ = ["FlowKeyMap", "RowTarget", "flux_key_map", "mmdit_key_map"]


@dataclass(frozen=True)
class RowTarget:
    """A LoRA target that changes a block of rows of a module's weight (and bias)."""

    module: str
    block: RowBlock


@dataclass
class FlowKeyMap:
    """LoRA target name -> module path (whole weights) and -> :class:`RowTarget` (blocks of rows)."""

    modules: dict[str, str] = field(default_factory=dict)
    rows: dict[str, RowTarget] = field(default_factory=dict)


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def _checkpoint_spellings(path: str) -> Iterator[str]:
    yield path
    yield f"diffusion_model.{path}"
    yield f"model.diffusion_model.{path}"
    yield f"lora_unet_{_underscored(path)}"


def _diffusers_spellings(name: str) -> Iterator[str]:
    yield name
    yield f"transformer.{name}"
    yield f"base_model.model.{name}"
    yield f"lora_transformer_{_underscored(name)}"
    yield f"lycoris_{_underscored(name)}"


# One diffusers name: (diffusers module, checkpoint module, row block or None for the whole weight).
_Entry = tuple[str, str, RowBlock | None]


def _build(module_paths: Iterable[str], entries: Iterable[_Entry]) -> FlowKeyMap:
    """Checkpoint spellings of every path, diffusers spellings of the entries whose module exists."""
    paths = set(module_paths)
    key_map = FlowKeyMap()
    for path in sorted(paths):
        for spelling in _checkpoint_spellings(path):
            key_map.modules[spelling] = path
    for diffusers, module, block in entries:
        if module not in paths:
            continue
        for spelling in _diffusers_spellings(diffusers):
            if block is None:
                key_map.modules[spelling] = module
            else:
                key_map.rows[spelling] = RowTarget(module, block)
    return key_map


def _qkv(prefix: str, names: tuple[str, str, str], module: str, hidden: int) -> Iterator[_Entry]:
    """Separate q, k, v projections onto the three ``hidden``-row blocks of a fused weight."""
    for index, name in enumerate(names):
        yield f"{prefix}.{name}", module, RowBlock(index * hidden, hidden)


def _swapped(rows: int) -> RowBlock:
    return RowBlock(0, rows, swap_halves=True)


_SELF = ("to_q", "to_k", "to_v")
_ADDED = ("add_q_proj", "add_k_proj", "add_v_proj")


def mmdit_key_map(module_paths: Iterable[str], config: MMDiTConfig) -> FlowKeyMap:
    """Every LoRA target name of an SD3/SD3.5 MMDiT's modules (paths as in :class:`MMDiT`)."""
    return _build(module_paths, _mmdit_entries(config))


def _mmdit_entries(config: MMDiTConfig) -> Iterator[_Entry]:
    h = config.hidden_size
    for n in range(config.depth):
        d, p = f"transformer_blocks.{n}", f"joint_blocks.{n}"
        x, c = f"{p}.x_block", f"{p}.context_block"
        yield from _qkv(f"{d}.attn", _SELF, f"{x}.attn.qkv", h)
        yield from _qkv(f"{d}.attn", _ADDED, f"{c}.attn.qkv", h)
        yield from _qkv(f"{d}.attn2", _SELF, f"{x}.attn2.qkv", h)
        yield f"{d}.attn.to_out.0", f"{x}.attn.proj", None
        yield f"{d}.attn2.to_out.0", f"{x}.attn2.proj", None
        yield f"{d}.attn.to_add_out", f"{c}.attn.proj", None
        yield f"{d}.ff.net.0.proj", f"{x}.mlp.fc1", None
        yield f"{d}.ff.net.2", f"{x}.mlp.fc2", None
        yield f"{d}.ff_context.net.0.proj", f"{c}.mlp.fc1", None
        yield f"{d}.ff_context.net.2", f"{c}.mlp.fc2", None
        yield f"{d}.norm1.linear", f"{x}.adaLN_modulation.1", None
        pre_only = n == config.depth - 1  # diffusers' AdaLayerNormContinuous: (scale, shift)
        yield f"{d}.norm1_context.linear", f"{c}.adaLN_modulation.1", _swapped(2 * h) if pre_only else None
    yield "pos_embed.proj", "x_embedder.proj", None
    yield "context_embedder", "context_embedder", None
    yield "time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", None
    yield "time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", None
    yield "time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", None
    yield "time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", None
    yield "proj_out", "final_layer.linear", None
    yield "norm_out.linear", "final_layer.adaLN_modulation.1", _swapped(2 * h)


def flux_key_map(module_paths: Iterable[str], config: FluxConfig) -> FlowKeyMap:
    """Every LoRA target name of a Flux.1 transformer's modules (paths as in :class:`Flux`)."""
    key_map = _build(module_paths, _flux_entries(config))
    paths = set(key_map.modules.values())
    h = config.hidden_size
    for n in range(config.depth_single_blocks):  # ComfyUI's name for the q, k, v rows of linear1
        module = f"single_blocks.{n}.linear1"
        if module in paths:
            key_map.rows[f"diffusion_model.{module}_qkv"] = RowTarget(module, RowBlock(0, 3 * h))
    return key_map


def _flux_entries(config: FluxConfig) -> Iterator[_Entry]:
    h = config.hidden_size
    for n in range(config.depth):
        d, p = f"transformer_blocks.{n}", f"double_blocks.{n}"
        yield from _qkv(f"{d}.attn", _SELF, f"{p}.img_attn.qkv", h)
        yield from _qkv(f"{d}.attn", _ADDED, f"{p}.txt_attn.qkv", h)
        yield f"{d}.attn.to_out.0", f"{p}.img_attn.proj", None
        yield f"{d}.attn.to_add_out", f"{p}.txt_attn.proj", None
        yield f"{d}.ff.net.0.proj", f"{p}.img_mlp.0", None
        yield f"{d}.ff.net.2", f"{p}.img_mlp.2", None
        yield f"{d}.ff_context.net.0.proj", f"{p}.txt_mlp.0", None
        yield f"{d}.ff_context.net.2", f"{p}.txt_mlp.2", None
        yield f"{d}.norm1.linear", f"{p}.img_mod.lin", None
        yield f"{d}.norm1_context.linear", f"{p}.txt_mod.lin", None
    for n in range(config.depth_single_blocks):
        d, p = f"single_transformer_blocks.{n}", f"single_blocks.{n}"
        yield from _qkv(f"{d}.attn", _SELF, f"{p}.linear1", h)
        yield f"{d}.proj_mlp", f"{p}.linear1", RowBlock(3 * h, config.mlp_hidden)
        yield f"{d}.proj_out", f"{p}.linear2", None
        yield f"{d}.norm.linear", f"{p}.modulation.lin", None
    yield "x_embedder", "img_in", None
    yield "context_embedder", "txt_in", None
    for diffusers, ours in (("timestep", "time_in"), ("guidance", "guidance_in"), ("text", "vector_in")):
        yield f"time_text_embed.{diffusers}_embedder.linear_1", f"{ours}.in_layer", None
        yield f"time_text_embed.{diffusers}_embedder.linear_2", f"{ours}.out_layer", None
    yield "proj_out", "final_layer.linear", None
    yield "norm_out.linear", "final_layer.adaLN_modulation.1", _swapped(2 * h)
