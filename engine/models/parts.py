"""Model parts stored on their own: UNet files, text-encoder files and diffusers-format folders.

A checkpoint keeps its UNet under ``model.diffusion_model.``; a UNet file (UNETLoader, models/diffusion_models)
keeps it with the keys bare, under another prefix, or in diffusers' names (``down_blocks.0.resnets.0...``).
:func:`find_unet_layout` says which (a :class:`~engine.models.handles.KeyLayout`), :func:`unet_tensors`
reads the tensors in Loom's (LDM) names whatever the layout, and :func:`unet_family` recognises the family
from the UNet alone, by structure as :func:`~engine.models.loaders.detect_family` does:

* ``label_emb`` (an adm input) means SDXL; base (6 size scalars of 256) or refiner (5 with the aesthetic score)
  is told by the pooled width that remains, which must be positive and at most the context width; the
  real sizes (2816 / 2560) decide where both fit;
* otherwise a linear ``proj_in`` means SD2.x (OpenCLIP-H), a 1x1 conv SD1.x; SD2's v-prediction is the
  checkpoints' rule (``v_pred`` key, or the spread of one norm bias).

A text-encoder file holds one CLIP text tower in transformers' layout (``text_model.encoder.layers...``,
maybe under a prefix) or OpenCLIP's (``transformer.resblocks...``, ``token_embedding``). :func:`find_towers`
finds them; :func:`single_clip` and :func:`dual_clip` place them where the family's checkpoints keep them
(:class:`~engine.models.handles.TextEncoderFile`), so the text encoder loads through the same code as a
checkpoint's. Towers are told apart by width where it is a real one (768 CLIP-L, 1024 OpenCLIP-H, 1280
OpenCLIP-bigG); the tiny test towers of other widths by layout (transformers: CLIP-L; OpenCLIP: H alone,
bigG beside a CLIP-L).

SD3 / Flux text-encoder files (CLIPLoader / DualCLIPLoader types sd3 and flux, TripleCLIPLoader) hold a CLIP
tower or a T5 encoder (bare ``encoder.block.N...`` / ``shared.weight`` keys, as ComfyUI's ``t5xxl_*`` files,
or under ``text_encoders.t5xxl.transformer.``). :func:`find_flow_text_part` says which (CLIP-L 768, CLIP-G
1280; tiny towers: OpenCLIP layout is CLIP-G, transformers' CLIP-L, and of two tiny towers the wider is
CLIP-G) and :func:`flow_clip` checks a loader's files against its recipe and places each under the prefix
single-file SD3 / Flux checkpoints keep it at (``text_encoders.clip_l.transformer.`` ...).

A diffusers folder (``model_index.json``, ``unet/``, ``text_encoder/``, ``text_encoder_2/``, ``vae/``):
:func:`read_diffusers_folder`. Its VAE's names are converted while read (:func:`vae_tensors`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path

import torch

from engine.backend.t5 import find_t5_prefix, is_t5_state_dict
from engine.backend.text import FAMILY_LAYOUTS
from engine.models.convert_diffusers import UNetLayout, diffusers_vae_key_to_ldm, unet_names
from engine.models.families import ModelFamily
from engine.models.flow_models import FLOW_ROOTS, flow_family, is_flow_layout
from engine.models.handles import CHECKPOINT_UNET, FileRef, KeyLayout, TextEncoderFile
from engine.models.loaders import _V_PREDICTION_STD, CheckpointFile, UnsupportedModel
from engine.models.weight_storage import FLOAT8

__all__ = [
    "DiffusersParts", "FlowTextPart", "Tower", "dual_clip", "find_flow_text_part", "find_towers", "find_unet_layout",
    "flow_clip", "read_diffusers_folder", "single_clip", "text_state", "unet_family", "unet_keys", "unet_shapes",
    "unet_tensors", "vae_shapes", "vae_tensors",
]

log = logging.getLogger(__name__)

_LDM_FIRST = "input_blocks.0.0.weight"
_DIFFUSERS_FIRST = "conv_in.weight"
#: The real adm widths: SDXL base (1280 pooled + 6 x 256) and refiner (1280 + 5 x 256).
_REAL_ADM = {2816: "sdxl", 2560: "sdxl_refiner"}
_SIZE_EMBEDDING = 256
_UNET_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


# --------------------------------------------------------------------------------------------- UNet


def find_unet_layout(ckpt: CheckpointFile) -> KeyLayout:
    """Where the UNet is in ``ckpt``: a checkpoint's prefix, any other prefix, bare, or diffusers' names."""
    keys = ckpt.keys()
    if CHECKPOINT_UNET.prefix + _LDM_FIRST in ckpt:
        return CHECKPOINT_UNET
    names = set(keys)
    for prefix in (CHECKPOINT_UNET.prefix, "diffusion_model.", "model.", ""):
        if is_flow_layout(names, prefix):  # an SD3/Flux transformer (engine/models/flow_models.py)
            return KeyLayout(prefix)
    for key in keys:
        if key.endswith(_LDM_FIRST) and not key.startswith(("control_model.", "lora_")):
            return KeyLayout(key[: -len(_LDM_FIRST)])
    for key in keys:
        prefix = key[: -len(_DIFFUSERS_FIRST)]
        if key.endswith(_DIFFUSERS_FIRST) and f"{prefix}down_blocks.0.resnets.0.conv1.weight" in ckpt:
            return KeyLayout(prefix, "diffusers")
    sample = ", ".join(sorted(keys)[:4]) or "no tensors"
    if any(key.startswith(("transformer_blocks.", "single_transformer_blocks.")) for key in keys):
        raise UnsupportedModel(f"{ckpt.path.name} is a diffusers-format SD3/Flux transformer; Loom reads the "
                               "single-file layout (joint_blocks.* / double_blocks.*): use the original "
                               "(Stability AI / Black Forest Labs) release of the file")
    raise UnsupportedModel(f"{ckpt.path.name} holds no SD1/SD2/SDXL UNet, SD3 MMDiT or Flux transformer (no "
                           f"input_blocks.0.0.weight, diffusers conv_in + down_blocks, joint_blocks.* or "
                           f"double_blocks.* keys; found {sample})")


def _diffusers_names(ckpt: CheckpointFile, layout: KeyLayout) -> dict[str, str]:
    """file key -> LDM name (without prefix) of every UNet key."""
    keys = [key[len(layout.prefix):] for key in ckpt.keys() if key.startswith(layout.prefix)]
    if layout.naming == "ldm":
        roots = FLOW_ROOTS if is_flow_layout(ckpt.keys(), layout.prefix) else _UNET_ROOTS
        return {layout.prefix + key: key for key in keys if key.startswith(roots)}
    names = unet_names(UNetLayout.from_diffusers_keys(keys))
    try:
        return {layout.prefix + key: names.to_ldm(key) for key in keys}
    except KeyError as exc:
        raise UnsupportedModel(f"{ckpt.path.name}: a diffusers UNet key has no place in the UNet ({exc})") from None


def unet_keys(ckpt: CheckpointFile, layout: KeyLayout) -> dict[str, str]:
    """Loom's (LDM) name -> file key of every UNet tensor (for reading weights one by one, by name)."""
    return {ldm: key for key, ldm in _diffusers_names(ckpt, layout).items()}


def unet_shapes(ckpt: CheckpointFile, layout: KeyLayout) -> dict[str, tuple[int, ...]]:
    """Shapes of the UNet's tensors by Loom's (LDM) names."""
    return {ldm: ckpt.shape(key) for key, ldm in _diffusers_names(ckpt, layout).items()}


def unet_tensors(ckpt: CheckpointFile, layout: KeyLayout,
                 dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(LDM name, tensor)`` for every UNet tensor, one at a time."""
    for key, ldm in _diffusers_names(ckpt, layout).items():
        yield ldm, ckpt.load(key, dtype)


def unet_family(ckpt: CheckpointFile, layout: KeyLayout, prediction: str | None = None) -> ModelFamily:
    """The family of the UNet alone (see the module docstring); UnsupportedModel naming what was found."""
    names = _diffusers_names(ckpt, layout)
    shapes = {ldm: ckpt.shape(key) for key, ldm in names.items()}
    try:
        flow = flow_family(shapes, "", ckpt.path.name)
    except ValueError as exc:
        raise UnsupportedModel(str(exc)) from None
    if flow is not None:
        return flow
    in_channels = shapes[_LDM_FIRST][1]
    if in_channels not in (4, 8, 9):
        raise UnsupportedModel(f"{ckpt.path.name}: a UNet with {in_channels} input channels (4, 8 or 9 supported: "
                               "plain, InstructPix2Pix or inpainting)")
    context = next((shape[1] for name, shape in shapes.items() if name.endswith("attn2.to_k.weight")), None)
    if context is None:
        raise UnsupportedModel(f"{ckpt.path.name}: a UNet without cross-attention; not an SD1/SD2/SDXL UNet")
    if "label_emb.0.0.weight" in shapes:
        name = _sdxl_kind(shapes["label_emb.0.0.weight"][1], context)
    else:
        proj_in = next(shape for key, shape in shapes.items() if key.endswith(".proj_in.weight"))
        name = "sd2" if len(proj_in) == 2 else "sd1"
    if prediction is None:
        prediction = "v" if "v_pred" in ckpt else _sd2_prediction(ckpt, names) if name == "sd2" else "eps"
    return ModelFamily(name=name, prediction=prediction, in_channels=in_channels)


def _sdxl_kind(adm: int, context: int) -> str:
    fits = [kind for kind, scalars in (("sdxl", 6), ("sdxl_refiner", 5))
            if 0 < adm - scalars * _SIZE_EMBEDDING <= context]
    if len(fits) == 1:
        return fits[0]
    return _REAL_ADM.get(adm, "sdxl")


def _sd2_prediction(ckpt: CheckpointFile, names: Mapping[str, str]) -> str:
    wanted = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    key = next((key for key, ldm in names.items() if ldm == wanted), None)
    if key is None:
        return "eps"
    return "v" if float(ckpt.load(key, torch.float32).std()) > _V_PREDICTION_STD else "eps"


# --------------------------------------------------------------------------------------------- text encoders

_HF_TOKEN = "embeddings.token_embedding.weight"
_OPENCLIP_TOKEN = "token_embedding.weight"
_OPENCLIP_LAYER = "transformer.resblocks.0.ln_1.weight"
_REAL_WIDTHS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
_TEXT_ROOTS = ("text_model.", "text_projection", "embeddings.", "encoder.", "final_layer_norm.", "token_embedding.",
               "positional_embedding", "transformer.", "ln_final.", "logit_scale", "shared.", "scaled_fp8")


@dataclass(frozen=True)
class Tower:
    """A text tower found in a file: its key prefix there, layout ("hf" or "openclip") and width."""

    file: FileRef
    prefix: str
    layout: str
    width: int

    @property
    def kind(self) -> str:
        """clip_l, clip_h or clip_g; towers of other widths (tiny test models): clip_l or openclip."""
        return _REAL_WIDTHS.get(self.width, "clip_l" if self.layout == "hf" else "openclip")

    def placed(self, tower: str) -> TextEncoderFile:
        return TextEncoderFile(self.file, self.prefix, tower)


def find_towers(path: Path) -> list[Tower]:
    """Every CLIP text tower in the file at ``path`` (either layout, any prefix)."""
    ref = FileRef.of(path)
    found: list[Tower] = []
    with CheckpointFile(path) as ckpt:
        for key in ckpt.keys():
            if key.endswith(_HF_TOKEN):
                head = key[: -len(_HF_TOKEN)]
                found.append(Tower(ref, head.removesuffix("text_model."), "hf", ckpt.shape(key)[1]))
            elif key.endswith(_OPENCLIP_TOKEN) and key[: -len(_OPENCLIP_TOKEN)] + _OPENCLIP_LAYER in ckpt:
                found.append(Tower(ref, key[: -len(_OPENCLIP_TOKEN)], "openclip", ckpt.shape(key)[1]))
    return found


def _one_tower(path: Path, what: str) -> Tower:
    towers = find_towers(path)
    if len(towers) == 1:
        return towers[0]
    if not towers:
        with CheckpointFile(path) as ckpt:
            sample = ", ".join(sorted(ckpt.keys())[:4]) or "no tensors"
        raise UnsupportedModel(f"{what}: {path.name} holds no CLIP text encoder (no text_model.embeddings."
                               f"token_embedding.weight or OpenCLIP token_embedding + transformer.resblocks keys; "
                               f"found {sample})")
    prefixes = ", ".join(repr(t.prefix) for t in towers)
    raise UnsupportedModel(f"{what}: {path.name} holds {len(towers)} text encoders (under {prefixes}); it is a "
                           "checkpoint: load it with CheckpointLoaderSimple, or pick a file with one text encoder")


_SINGLE_FAMILY = {"clip_l": "sd1", "clip_h": "sd2", "openclip": "sd2", "clip_g": "sdxl_refiner"}


def single_clip(path: Path, what: str) -> tuple[str, tuple[TextEncoderFile, ...]]:
    """CLIPLoader ``stable_diffusion``: (family, sources) of one text-encoder file; SD1 CLIP-L, SD2 OpenCLIP-H,
    or OpenCLIP-bigG alone (the SDXL refiner's)."""
    tower = _one_tower(path, what)
    family = _SINGLE_FAMILY[tower.kind]
    return family, (tower.placed(FAMILY_LAYOUTS[family][0].prefix),)


def dual_clip(first: Path, second: Path, what: tuple[str, str]) -> tuple[str, tuple[TextEncoderFile, ...]]:
    """DualCLIPLoader ``sdxl``: a CLIP-L and an OpenCLIP-bigG file, in either order."""
    towers = [_one_tower(first, what[0]), _one_tower(second, what[1])]
    big = [tower.kind in ("clip_g", "openclip") for tower in towers]
    if big.count(True) != 1 or any(tower.kind == "clip_h" for tower in towers):
        kinds = ", ".join(f"{name}: {tower.file.name} ({tower.kind}, width {tower.width})"
                          for name, tower in zip(what, towers, strict=True))
        raise UnsupportedModel(f"sdxl needs one CLIP-L and one OpenCLIP-bigG text encoder; got {kinds}")
    clip_l, clip_g = (towers[1], towers[0]) if big[0] else (towers[0], towers[1])
    layouts = FAMILY_LAYOUTS["sdxl"]
    return "sdxl", (clip_l.placed(layouts[0].prefix), clip_g.placed(layouts[1].prefix))


_FLOW_KIND_WIDTHS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
_FLOW_LABELS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "clip_h": "OpenCLIP-H", "t5xxl": "T5-XXL"}
_FLOW_KINDS = ("clip_l", "clip_g", "t5xxl")
#: What each SD3 / Flux loader accepts: (family, the kinds it must have, the recipe in words); no kind twice.
FLOW_RECIPES = {
    "sd3": ("sd3", (), "type sd3 needs different text encoders among CLIP-L, CLIP-G and T5-XXL"),
    "flux": ("flux", ("clip_l", "t5xxl"), "type flux needs one CLIP-L and one T5-XXL text encoder"),
    "triple": ("sd3", _FLOW_KINDS, "needs one CLIP-L, one CLIP-G and one T5-XXL text encoder"),
}


@dataclass(frozen=True)
class FlowTextPart:
    """A text encoder found in a file for SD3 / Flux: clip_l, clip_g, clip_h or t5xxl, its prefix there and
    width; ``tiny`` marks a CLIP tower of a width no real one has (told apart by layout or by its partner)."""

    file: FileRef
    prefix: str
    kind: str
    width: int
    tiny: bool = False

    def describe(self, what: str) -> str:
        """``clip_name1 'x.safetensors' is CLIP-G (width 1280)`` for ``what`` ``Node clip_name1 'x.safetensors'``."""
        return f"{what.split(' ', 1)[-1]} is {_FLOW_LABELS[self.kind]} (width {self.width})"

    def placed(self) -> TextEncoderFile:
        from engine.backend.flow_text import FLOW_TOWER_PREFIXES  # imports T5: only when a flow model needs it

        return TextEncoderFile(self.file, self.prefix, FLOW_TOWER_PREFIXES[self.kind])


def _t5_width(ckpt: CheckpointFile, prefix: str) -> int:
    for name in ("shared.weight", "encoder.embed_tokens.weight"):
        if f"{prefix}{name}" in ckpt:
            return ckpt.shape(f"{prefix}{name}")[1]
    raise UnsupportedModel(f"{ckpt.path.name}: a T5 encoder without its token embedding ('{prefix}shared.weight')")


def find_flow_text_part(path: Path, what: str) -> FlowTextPart:
    """The one CLIP tower or T5 encoder in the file at ``path`` (``what`` names the node and input in errors)."""
    towers = find_towers(path)
    t5: FlowTextPart | None = None
    with CheckpointFile(path) as ckpt:
        keys = dict.fromkeys(ckpt.keys())
        if is_t5_state_dict(keys):
            prefix = find_t5_prefix(keys)
            t5 = FlowTextPart(FileRef.of(path), prefix, "t5xxl", _t5_width(ckpt, prefix))
    count = len(towers) + (t5 is not None)
    if count > 1:
        raise UnsupportedModel(f"{what}: {path.name} holds {count} text encoders; it is a checkpoint: load it with "
                               "CheckpointLoaderSimple, or pick a file with one text encoder")
    if t5 is not None:
        return t5
    if not towers:
        sample = ", ".join(sorted(keys)[:4]) or "no tensors"
        raise UnsupportedModel(f"{what}: {path.name} holds no CLIP or T5 text encoder (no text_model.embeddings."
                               f"token_embedding.weight, OpenCLIP token_embedding or T5 encoder.block.0 keys; "
                               f"found {sample})")
    tower = towers[0]
    if tower.width in _FLOW_KIND_WIDTHS:
        return FlowTextPart(tower.file, tower.prefix, _FLOW_KIND_WIDTHS[tower.width], tower.width)
    kind = "clip_g" if tower.layout == "openclip" else "clip_l"
    return FlowTextPart(tower.file, tower.prefix, kind, tower.width, tiny=True)


def _tell_tiny_towers(found: list[FlowTextPart]) -> list[FlowTextPart]:
    """Two tiny CLIP towers of different widths: the wider is CLIP-G, the narrower CLIP-L."""
    tiny = [part for part in found if part.tiny]
    if len(tiny) != 2 or tiny[0].width == tiny[1].width:
        return found
    wider = max(tiny, key=lambda part: part.width)
    return [dataclass_replace(part, kind="clip_g" if part is wider else "clip_l") if part.tiny else part
            for part in found]


def flow_clip(paths: tuple[Path, ...], what: tuple[str, ...], recipe: str) -> tuple[str, tuple[TextEncoderFile, ...]]:
    """(family, sources) of an SD3 / Flux loader's files in any order (``recipe``: "sd3" and "flux", CLIPLoader's
    and DualCLIPLoader's types, or "triple", TripleCLIPLoader's); sources come in the order clip_l, clip_g, t5xxl.
    UnsupportedModel names the node, each input and what it holds when the files do not make the recipe (a kind
    SD3 / Flux does not use, one twice, or one it needs missing); ``what`` is ``Node input 'file'`` per file."""
    family, required, words = FLOW_RECIPES[recipe]
    allowed = _FLOW_KINDS if family == "sd3" else required
    found = _tell_tiny_towers([find_flow_text_part(path, name) for path, name in zip(paths, what, strict=True)])
    kinds = [part.kind for part in found]
    wrong = [kind for kind in kinds if kind not in allowed]
    if wrong or len(set(kinds)) != len(kinds) or not set(required) <= set(kinds):
        got = ", ".join(part.describe(name) for part, name in zip(found, what, strict=True))
        raise UnsupportedModel(f"{what[0].split(' ', 1)[0]} {words}; {got}")
    ordered = sorted(found, key=lambda part: _FLOW_KINDS.index(part.kind))
    return family, tuple(part.placed() for part in ordered)


def text_state(sources: tuple[TextEncoderFile, ...], dtype: torch.dtype, *,
               keep_float8: bool = False) -> dict[str, torch.Tensor]:
    """The towers' tensors under their checkpoint prefixes, converted to ``dtype`` while read (float8 ones kept
    as they are with ``keep_float8``)."""
    state: dict[str, torch.Tensor] = {}
    for source in sources:
        with CheckpointFile(source.file.path) as ckpt:
            for key in ckpt.keys():
                rest = key[len(source.prefix):]
                if key.startswith(source.prefix) and rest.startswith(_TEXT_ROOTS):
                    keep = keep_float8 and ckpt.dtype(key) in FLOAT8
                    state[source.tower + rest] = ckpt.load(key, None if keep else dtype)
    return state


def text_elements(sources: tuple[TextEncoderFile, ...]) -> int:
    """How many elements :func:`text_state` reads (safetensors files; 0 for pickles)."""
    total = 0
    for source in sources:
        if not source.file.path.lower().endswith(".safetensors"):
            continue
        with CheckpointFile(source.file.path) as ckpt:
            for key in ckpt.keys():
                if key.startswith(source.prefix) and key[len(source.prefix):].startswith(_TEXT_ROOTS):
                    total += _elements(ckpt.shape(key))
    return total


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


# --------------------------------------------------------------------------------------------- VAE


def _vae_names(ckpt: CheckpointFile, prefix: str, parts: tuple[str, ...]) -> dict[str, str]:
    """file key -> LDM VAE name; diffusers' names (``decoder.up_blocks...``) are converted."""
    keys = [key[len(prefix):] for key in ckpt.keys() if key.startswith(prefix)]
    if not any(key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for key in keys):
        return {prefix + key: key for key in keys if key.startswith(parts)}
    levels = len({match.group(1) for key in keys if (match := re.match(r"encoder\.down_blocks\.(\d+)\.", key))})
    try:
        return {prefix + key: diffusers_vae_key_to_ldm(key, levels) for key in keys if key.startswith(parts)}
    except KeyError as exc:
        raise UnsupportedModel(f"{ckpt.path.name}: a diffusers VAE key has no place in the VAE ({exc})") from None


def vae_shapes(ckpt: CheckpointFile, prefix: str, parts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {ldm: ckpt.shape(key) for key, ldm in _vae_names(ckpt, prefix, parts).items()}


def vae_tensors(ckpt: CheckpointFile, prefix: str, parts: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(LDM name, tensor)`` of the VAE under ``prefix`` (LDM or diffusers names), one at a time."""
    for key, ldm in _vae_names(ckpt, prefix, parts).items():
        yield ldm, ckpt.load(key)


# --------------------------------------------------------------------------------------------- diffusers folders

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


@dataclass(frozen=True)
class DiffusersParts:
    """The weight files of a diffusers-format folder and its scheduler's prediction type (None: unknown)."""

    unet: Path
    text_encoders: tuple[Path, ...]
    vae: Path
    prediction: str | None


def _weights(folder: Path, part: str, required: bool = True) -> Path | None:
    for name in _WEIGHT_FILES:
        path = folder / part / name
        if path.is_file():
            return path
    if required:
        raise UnsupportedModel(f"{folder.name}/{part} holds no weights (looked for {', '.join(_WEIGHT_FILES[:2])}, "
                               "fp16 variants and .bin); the folder is not a complete diffusers model")
    return None


def read_diffusers_folder(folder: Path) -> DiffusersParts:
    """The parts of a diffusers folder (``model_index.json`` beside ``unet/``, ``text_encoder/``, ``vae/``)."""
    encoders = tuple(path for part in ("text_encoder", "text_encoder_2")
                     if (path := _weights(folder, part, required=False)) is not None)
    if not encoders:
        raise UnsupportedModel(f"{folder.name} has no text_encoder/ or text_encoder_2/ weights; the folder is not "
                               "a complete diffusers model")
    unet, vae = _weights(folder, "unet"), _weights(folder, "vae")
    assert unet is not None and vae is not None
    return DiffusersParts(unet, encoders, vae, _scheduler_prediction(folder))


def _scheduler_prediction(folder: Path) -> str | None:
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        return None
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("prediction_type")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable scheduler config (%s); the prediction type comes from the weights", folder, exc)
        return None
    return {"epsilon": "eps", "v_prediction": "v"}.get(str(kind))
