"""Loading CLIP and SigLIP vision towers and style models from files, never from a hub.

A CLIP vision file is in one of three key layouts:

* transformers' (``vision_model.embeddings.*``, ``vision_model.encoder.layers.N.*``,
  ``visual_projection.weight``): OpenAI ViT-L/14 and ComfyUI's clip_vision_g / ViT-H files;
* OpenCLIP's (``visual.class_embedding``, ``visual.conv1.weight``, ``visual.transformer.resblocks.N.*``
  with a fused ``attn.in_proj_weight``, ``visual.proj``), converted here (in_proj split into q/k/v,
  ``proj`` transposed, ln/mlp names mapped);
* transformers' ``SiglipVisionModel`` (``vision_model.embeddings.patch_embedding.{weight,bias}``, no class
  embedding, no pre-layernorm, ``vision_model.post_layernorm``, ``vision_model.head.*``): ComfyUI's
  ``sigclip_vision_patch14_384.safetensors`` for Flux Redux. The attention-pooling head is dropped, as
  ComfyUI does (its SigLIP outputs are the post-layernorm tokens).

The ``CLIPVisionConfig`` comes from the shapes: hidden size, MLP width, layer count, patch size,
image size (from the position count), projection size. What shapes do not tell: 16 heads (every
ViT-L/14, ViT-H/14 and ViT-bigG/14 has 16; a width not divisible by 16 gets width // 64) and the
activation (quick_gelu for OpenAI's width 1024, gelu for the OpenCLIP H and bigG towers and others).
The ``SiglipVisionConfig`` likewise (hidden size, MLP width, layers, patch size; image size patch x the side of
the square position grid, except so400m/14's 27 x 27 = 729 positions, which ComfyUI and the release read at
384 px: 27 patches of 14 cover 378 and the convolution drops the rest); not in the shapes: the heads (16 for width 1152,
so400m's 16 x 72 as in ComfyUI's clip_vision_siglip_384.json; width // 64 otherwise, SigLIP base's 12 and
large's 16), the activation (tanh-approximated GELU) and the layer-norm epsilon (1e-6, the release's; ComfyUI
uses torch's default 1e-5, a difference far below fp16 resolution). A linear patch embedding (SigLIP 2
NaFlex) is refused. Loaded towers are cached by file (size and mtime included), two at a time.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from engine.backend.style_models import build_style_model
from engine.models.handles import FileRef
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["describe_clip_vision", "load_clip_vision", "load_style_model", "openclip_to_transformers",
           "siglip_config", "vision_config"]

log = logging.getLogger(__name__)

_OPENCLIP = "visual.transformer.resblocks.0.attn.in_proj_weight"
_HF_MARK = "vision_model.encoder.layers.0.layer_norm1.weight"
_CLASS = "vision_model.embeddings.class_embedding"
_PATCH = "vision_model.embeddings.patch_embedding.weight"
_POSITIONS = "vision_model.embeddings.position_embedding.weight"
_NAMES = {(1024, 24): "ViT-L/14", (1280, 32): "ViT-H/14", (1664, 48): "ViT-bigG/14", (1152, 27): "SigLIP so400m/14"}
#: SigLIP head counts the shapes cannot tell (so400m: 16 heads of 72); other widths get width // 64.
_SIGLIP_HEADS = {1152: 16}
#: Released SigLIP resolutions that are not a multiple of the patch, by (patch, grid side): so400m/14 reads
#: 384 px (27 patches of 14 cover 378; the convolution drops the rest). Others: patch x side.
_SIGLIP_SIZES = {(14, 27): 384}
VisionTower = CLIPVisionModelWithProjection | SiglipVisionModel
_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight", "ln_post.bias": "vision_model.post_layernorm.bias",
}
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}


def openclip_to_transformers(state: Mapping[str, Tensor], prefix: str = "visual.") -> dict[str, Tensor]:
    """An OpenCLIP visual tower's tensors under transformers' names (keys outside ``prefix`` dropped)."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _TOP:
            out[_TOP[name]] = tensor
        elif name == "proj":
            out["visual_projection.weight"] = tensor.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            out.update(_block_tensors(name, tensor))
    return out


def _block_tensors(name: str, tensor: Tensor) -> dict[str, Tensor]:
    _, _, index, rest = name.split(".", 3)
    base = f"vision_model.encoder.layers.{index}."
    if rest.startswith("attn.in_proj_"):
        kind = rest.rsplit("_", 1)[1]  # weight or bias
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{base}self_attn.{part}_proj.{kind}": t.contiguous() for part, t in zip("qkv", (q, k, v), strict=True)}
    module, leaf = rest.rsplit(".", 1)
    return {f"{base}{_BLOCK.get(module, module)}.{leaf}": tensor}


def vision_config(shapes: Mapping[str, tuple[int, ...]]) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` of a transformers-layout tower from its ``{key: shape}``."""
    hidden = shapes[_CLASS][0]
    patch = shapes[_PATCH][-1]
    positions = shapes[_POSITIONS][0]
    layers = _layer_count(shapes)
    side = math.isqrt(positions - 1)
    if side * side != positions - 1 or "visual_projection.weight" not in shapes:
        raise ValueError("position embedding or projection of an unexpected shape")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=layers, num_attention_heads=16 if hidden % 16 == 0 else max(1, hidden // 64),
        patch_size=patch, image_size=side * patch, projection_dim=shapes["visual_projection.weight"][0],
        hidden_act="quick_gelu" if hidden == 1024 else "gelu", layer_norm_eps=1e-5, num_channels=3)


def _layer_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith("vision_model.encoder.layers."))


def siglip_config(shapes: Mapping[str, tuple[int, ...]]) -> SiglipVisionConfig:
    """The ``SiglipVisionConfig`` (no pooling head) of a transformers-layout SigLIP tower from its shapes."""
    patch_shape = shapes[_PATCH]
    if len(patch_shape) != 4:
        raise ValueError("a linear patch embedding (SigLIP 2 NaFlex), which Loom does not load")
    hidden, _, patch, _ = patch_shape
    positions = shapes[_POSITIONS][0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"{positions} positions, not a square grid of patches")
    return SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_layer_count(shapes), num_attention_heads=_SIGLIP_HEADS.get(hidden, max(1, hidden // 64)),
        patch_size=patch, image_size=_SIGLIP_SIZES.get((patch, side), side * patch),
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=patch_shape[1], vision_use_head=False)


def _read_tensors(path: Path, prefix: str = "") -> dict[str, Tensor]:
    with CheckpointFile(path) as ckpt:
        keys = ckpt.keys()
        if prefix:
            if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" not in keys:
                raise UnsupportedModel(f"{path.name} holds no OpenCLIP vision tower under '{prefix}'; "
                                       "unCLIPCheckpointLoader needs an SD2.1 unCLIP checkpoint")
            return openclip_to_transformers({k: ckpt.load(k) for k in keys if k.startswith(prefix)}, prefix)
        if _OPENCLIP in keys:
            return openclip_to_transformers({k: ckpt.load(k) for k in keys if k.startswith("visual.")})
        if _HF_MARK not in keys:
            raise UnsupportedModel(f"{path.name} is not a CLIP vision model: it has neither transformers' "
                                   f"'{_HF_MARK}' nor OpenCLIP's '{_OPENCLIP}'; put a CLIP vision file "
                                   "(e.g. clip_vision_g.safetensors, or sigclip_vision_patch14_384.safetensors "
                                   "for Flux Redux) in models/clip_vision")
        return {k: ckpt.load(k) for k in keys if k.startswith(("vision_model.", "visual_projection."))}


def _config_of(path: Path, tensors: Mapping[str, Tensor]) -> CLIPVisionConfig | SiglipVisionConfig:
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    kind = "CLIP" if _CLASS in shapes else "SigLIP"
    try:
        return vision_config(shapes) if kind == "CLIP" else siglip_config(shapes)
    except (KeyError, ValueError, IndexError) as exc:
        raise UnsupportedModel(f"{path.name}: {kind} vision weights of an unknown structure ({exc})") from exc


def describe_clip_vision(config: PretrainedConfig) -> str:
    """A one-line description of a CLIP or SigLIP vision config (family, layers, width, resolution)."""
    default = "SigLIP vision" if isinstance(config, SiglipVisionConfig) else "CLIP vision"
    name = _NAMES.get((config.hidden_size, config.num_hidden_layers), default)
    if isinstance(config, SiglipVisionConfig):
        size, patch = config.image_size, config.patch_size
        tokens = (size // patch) ** 2 if isinstance(size, int) and isinstance(patch, int) else "?"
        return (f"{name} ({config.num_hidden_layers} layers, width {config.hidden_size}, "
                f"{config.image_size}px, {tokens} tokens)")
    return (f"{name} ({config.num_hidden_layers} layers, width {config.hidden_size}, "
            f"{config.image_size}px, embeds {config.projection_dim})")


def _siglip_tensors(tensors: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """A SigLIP file's tensors under ``SiglipVisionModel``'s names (``vision_model.`` dropped), without the
    attention-pooling head ComfyUI does not use."""
    head = [k for k in tensors if k.startswith("vision_model.head.")]
    if head:
        log.debug("%s: leaving out the SigLIP pooling head (%d tensors), as ComfyUI does", name, len(head))
    return {k.removeprefix("vision_model."): t for k, t in tensors.items() if k not in head}


def _adopt(config: CLIPVisionConfig | SiglipVisionConfig, tensors: Mapping[str, Tensor], name: str,
           device: torch.device, dtype: torch.dtype) -> VisionTower:
    model: VisionTower
    if isinstance(config, SiglipVisionConfig):
        tensors = _siglip_tensors(tensors, name)
        with torch.device("meta"):
            model = SiglipVisionModel(config)
    else:
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
    placed = {k: t.to(device=device, dtype=dtype) for k, t in tensors.items()}
    result = model.load_state_dict(placed, strict=False, assign=True)
    if result.unexpected_keys:
        log.warning("%s: ignoring unexpected weights %s", name, result.unexpected_keys[:8])
    for buffer_name, buffer in list(model.named_buffers()):
        if buffer.is_meta and buffer_name.endswith("position_ids"):
            owner = model.get_submodule(buffer_name.rsplit(".", 1)[0])
            positions = torch.arange(buffer.shape[-1], device=device).unsqueeze(0)
            owner.register_buffer("position_ids", positions, persistent=False)
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise UnsupportedModel(f"{name}: the vision tower file lacks {len(missing)} weights, e.g. {missing[:4]}")
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def load_clip_vision(file: FileRef, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     prefix: str = "") -> tuple[VisionTower, str]:
    """The CLIP or SigLIP vision tower of ``file`` (under ``prefix``: an OpenCLIP tower inside a checkpoint) on
    ``device`` in ``dtype``, and its description; cached per file version, device, dtype and prefix (two
    towers at most; outside the model manager's accounting)."""
    path = Path(file.path)
    tensors = _read_tensors(path, prefix)
    config = _config_of(path, tensors)
    return _adopt(config, tensors, path.name, torch.device(device), dtype), describe_clip_vision(config)


@functools.lru_cache(maxsize=2)
def load_style_model(file: FileRef) -> nn.Module:
    """The style model of ``file`` (float32, CPU); cached per file version."""
    path = Path(file.path)
    with CheckpointFile(path) as ckpt:
        tensors = {k: ckpt.load(k, torch.float32) for k in ckpt.keys()}
    try:
        model = build_style_model({k: tuple(t.shape) for k, t in tensors.items()})
        model.load_state_dict(tensors)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UnsupportedModel(f"{path.name} is not a style model Loom can load ({exc}); StyleModelLoader "
                               "takes the T2I-Adapter style model or Flux Redux from models/style_models") from exc
    return model.eval().requires_grad_(False)
