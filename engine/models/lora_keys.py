"""Which LoRA key names mean which weight of Loom's modules.

A LoRA names its targets in the spelling of the tool that trained it. :func:`unet_key_map` and
:func:`text_key_map` list, for every weight-bearing module of a loaded model, every spelling that
means it, so resolving a LoRA key is one dict lookup:

UNet (module path ``P`` in LDM naming, ``D`` the same module in diffusers naming, see
engine/models/convert_diffusers.py):

* ``lora_unet_{P with _}`` — kohya naming of LDM modules (kohya's SDXL LoRAs);
* ``lora_unet_{D with _}`` and ``lycoris_{D with _}`` — kohya / LyCORIS SD1.x and SD2.x LoRAs;
* ``unet.D`` and ``D`` — diffusers / PEFT, also with ``attnN.processor.to_q`` for ``attnN.to_q`` and
  ``attnN.processor.to_out`` for ``attnN.to_out.0`` (the attention-processor format);
* ``diffusion_model.P`` and ``model.diffusion_model.P`` — generic checkpoint-key LoRAs.

Text encoders (``M`` = ``encoder.layers.N.self_attn.q_proj`` etc., HF names):

* one tower (SD1 clip_l, SD2 clip_h, SDXL refiner clip_g): ``lora_te_text_model_{M with _}`` and
  ``text_encoder.text_model.M``; SD1 also accepts ``lora_te1_``;
* SDXL: clip_l as ``lora_te1_`` (and ``lora_te_``) / ``text_encoder.``, clip_g as ``lora_te2_`` /
  ``text_encoder_2.``; ``..._text_projection`` for the projection of a tower that has one;
* SD3 / Flux (a FlowTextEncoder): clip_l and clip_g as for SDXL whichever towers are present; the T5-XXL
  (``T`` = its HF module path, ``encoder.block.N.layer.0.SelfAttention.q`` etc.) as ``lora_te{i}_{T with _}``
  where ``i`` counts it after the CLIP towers present (ComfyUI's and OneTrainer's numbering: ``lora_te3_`` on
  SD3 with both CLIPs; ``lora_te2_`` and ``lora_te3_`` after CLIP-L alone, i.e. Flux) and as diffusers'
  ``text_encoder_3.T`` (SD3) / ``text_encoder_2.T`` (Flux).

For making LoRAs (the demo model's is trained by tools/): :func:`kohya_unet_key` and
:func:`kohya_text_key` give the kohya name a trainer should write for a module.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from engine.backend.text import ClipTower, TextEncoder
from engine.backend.unet import UNetConfig
from engine.models.convert_diffusers import UNetLayout, clip_layer_modules, unet_names

__all__ = [
    "TEXT_KEY_PREFIXES",
    "is_text_key",
    "kohya_text_key",
    "kohya_unet_key",
    "kohya_unet_names",
    "text_key_map",
    "unet_key_map",
]

#: Target prefixes that address a text encoder (everything else is looked up in the UNet).
TEXT_KEY_PREFIXES: tuple[str, ...] = (
    "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_prior_te_",
    "text_encoder.", "text_encoder_2.", "text_encoder_3.", "text_encoders.", "te.", "te1.", "te2.",
)
#: Prefixes of a second (SDXL clip_g) text encoder.
SECOND_TOWER_PREFIXES: tuple[str, ...] = ("lora_te2_", "text_encoder_2.", "te2.")

_ATTENTION_PROJECTIONS = (".to_q", ".to_k", ".to_v")
#: Text-encoder families whose towers are named by key (FlowTextEncoder: clip_l, clip_g, t5xxl, each optional).
_FLOW_TEXT_FAMILIES = ("sd3", "flux")
_FLOW_CLIP_PREFIXES = {"clip_l": (("lora_te1_", "lora_te_"), ("text_encoder.",)),
                       "clip_g": (("lora_te2_",), ("text_encoder_2.",))}


def is_text_key(target: str) -> bool:
    return target.startswith(TEXT_KEY_PREFIXES)


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def unet_key_map(module_paths: Iterable[str], config: UNetConfig) -> dict[str, str]:
    """Every LoRA target name of the given UNet modules (LDM paths) -> that module path."""
    names = unet_names(UNetLayout.from_config(config))
    key_map: dict[str, str] = {}
    for path in module_paths:
        key_map[f"lora_unet_{_underscored(path)}"] = path
        key_map[f"diffusion_model.{path}"] = path
        key_map[f"model.diffusion_model.{path}"] = path
        try:
            diffusers = names.to_diffusers(path)
        except KeyError:
            continue
        key_map[f"lora_unet_{_underscored(diffusers)}"] = path
        key_map[f"lycoris_{_underscored(diffusers)}"] = path
        for spelling in (diffusers, *_processor_spellings(diffusers)):
            key_map[spelling] = path
            key_map[f"unet.{spelling}"] = path
    return key_map


def _processor_spellings(diffusers: str) -> list[str]:
    """diffusers' attention-processor names of an attention projection (``attn1.processor.to_q``)."""
    if diffusers.endswith(_ATTENTION_PROJECTIONS):
        head, _, leaf = diffusers.rpartition(".")
        return [f"{head}.processor.{leaf}"]
    if diffusers.endswith(".to_out.0"):
        return [f"{diffusers[: -len('.to_out.0')]}.processor.to_out"]
    return []


def _tower_prefixes(towers: list[str], key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kohya prefixes, diffusers prefixes) of one tower of a TextEncoder with ``towers``."""
    if len(towers) > 1:  # SDXL: clip_l first, clip_g second
        if towers.index(key) == 0:
            return ("lora_te1_", "lora_te_"), ("text_encoder.",)
        return ("lora_te2_",), ("text_encoder_2.",)
    if key == "clip_l":
        return ("lora_te_", "lora_te1_"), ("text_encoder.",)
    return ("lora_te_",), ("text_encoder.",)


def text_key_map(encoder: TextEncoder) -> dict[str, str]:
    """Every LoRA target name of the encoder's LoRA-able modules -> module path within ``encoder``."""
    paths = {id(module): name for name, module in encoder.named_modules()}
    clips = [key for key, tower in encoder.towers.items() if isinstance(tower, ClipTower)]
    flow = encoder.family in _FLOW_TEXT_FAMILIES
    key_map: dict[str, str] = {}
    for key, tower in encoder.towers.items():
        if isinstance(tower, ClipTower):
            prefixes = _FLOW_CLIP_PREFIXES.get(key) if flow else None
            _add_clip_tower(key_map, tower, paths, prefixes or _tower_prefixes(clips, key))
        elif flow:
            _add_t5_tower(key_map, tower, paths, clips, encoder.family)
    return key_map


def _add_clip_tower(key_map: dict[str, str], tower: ClipTower, paths: dict[int, str],
                    prefixes: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    base = paths[id(tower.text_model)]
    kohya, diffusers = prefixes
    for module in clip_layer_modules(tower.num_layers):
        for prefix in kohya:
            key_map[f"{prefix}text_model_{_underscored(module)}"] = f"{base}.{module}"
        for prefix in diffusers:
            key_map[f"{prefix}text_model.{module}"] = f"{base}.{module}"
    projection = getattr(tower.model, "text_projection", None)
    if isinstance(projection, nn.Module):
        for prefix in (*kohya, *diffusers):
            key_map[f"{prefix}text_projection"] = paths[id(projection)]


def _add_t5_tower(key_map: dict[str, str], tower: nn.Module, paths: dict[int, str], clips: list[str],
                  family: str) -> None:
    """The T5-XXL of an SD3 / Flux text encoder (the module docstring's numbering)."""
    model = getattr(tower, "model", None)
    if not isinstance(model, nn.Module):
        return
    base = paths[id(model)]
    index = 1 + len(clips)
    kohya = [f"lora_te{index}_"]
    if clips == ["clip_l"]:  # OneTrainer's Flux numbering beside ComfyUI's
        kohya.append("lora_te3_")
    diffusers = "text_encoder_3." if family == "sd3" else "text_encoder_2."
    for name, module in model.named_modules():
        if name and isinstance(getattr(module, "weight", None), nn.Parameter):
            key_map[f"{diffusers}{name}"] = f"{base}.{name}"
            for prefix in kohya:
                key_map[f"{prefix}{_underscored(name)}"] = f"{base}.{name}"


def kohya_unet_key(ldm_module_path: str, config: UNetConfig) -> str:
    """The kohya (sd-scripts) LoRA name of a UNet module, as kohya's trainers write it.

    ``ldm_module_path`` is a module path of :class:`~engine.backend.unet.UNetModel` (the checkpoint
    key without ``model.diffusion_model.`` and without ``.weight``), e.g.
    ``input_blocks.1.1.transformer_blocks.0.attn1.to_q``. SD1.x/SD2.x LoRAs use diffusers' module
    names (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``); SDXL LoRAs
    (``config.adm_in_channels`` set) use the LDM names (``lora_unet_input_blocks_4_1_...``). Loom
    reads both spellings for every family. Raises ``KeyError`` for a path outside the layout.
    """
    path = ldm_module_path.removeprefix("model.diffusion_model.").removesuffix(".weight")
    if config.adm_in_channels is None:
        path = unet_names(UNetLayout.from_config(config)).to_diffusers(path)
    return f"lora_unet_{_underscored(path)}"


def kohya_unet_names(module_paths: Iterable[str], config: UNetConfig) -> dict[str, str]:
    """Module path -> the kohya name a LoRA writer should use for it (:func:`kohya_unet_key`, else the LDM
    path underscored), for the paths whose name :func:`unet_key_map` maps back to that very module."""
    paths = list(module_paths)
    key_map = unet_key_map(paths, config)
    names: dict[str, str] = {}
    for path in paths:
        try:
            name = kohya_unet_key(path, config)
        except KeyError:
            name = f"lora_unet_{_underscored(path)}"
        if key_map.get(name) == path:
            names[path] = name
    return names


def kohya_text_key(module_path: str, encoder: int | None = None) -> str:
    """The kohya LoRA name of a text-encoder module given by its HF path.

    ``encoder.layers.0.self_attn.q_proj`` -> ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``
    (SD1.x/SD2.x). ``encoder=1`` / ``2`` give SDXL's ``lora_te1_`` (clip_l) / ``lora_te2_`` (clip_g).
    """
    path = module_path.removesuffix(".weight").removeprefix("text_model.")
    prefix = "lora_te_" if encoder is None else f"lora_te{encoder}_"
    if path == "text_projection":
        return f"{prefix}text_projection"
    return f"{prefix}text_model_{_underscored(path)}"
