"""Loading CLIP vision towers and style models from files, never from a hub.

A CLIP vision file is in one of two key layouts:

* transformers' (``vision_model.embeddings.*``, ``vision_model.encoder.layers.N.*``,
  ``visual_projection.weight``): OpenAI ViT-L/14 and ComfyUI's clip_vision_g / ViT-H files;
* OpenCLIP's (``visual.class_embedding``, ``visual.conv1.weight``, ``visual.transformer.resblocks.N.*``
  with a fused ``attn.in_proj_weight``, ``visual.proj``), converted here (in_proj split into q/k/v,
  ``proj`` transposed, ln/mlp names mapped).

The ``CLIPVisionConfig`` comes from the shapes: hidden size, MLP width, layer count, patch size,
image size (from the position count), projection size. What shapes do not tell: 16 heads (every
ViT-L/14, ViT-H/14 and ViT-bigG/14 has 16; a width not divisible by 16 gets width // 64) and the
activation (quick_gelu for OpenAI's width 1024, gelu for the OpenCLIP H and bigG towers and others).
Loaded towers are cached by file (size and mtime included), two at a time.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from engine.backend.style_models import build_style_model
from engine.models.handles import FileRef
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["describe_clip_vision", "load_clip_vision", "load_style_model", "openclip_to_transformers",
           "vision_config"]

log = logging.getLogger(__name__)

_OPENCLIP = "visual.transformer.resblocks.0.attn.in_proj_weight"
_HF_MARK = "vision_model.encoder.layers.0.layer_norm1.weight"
_NAMES = {(1024, 24): "ViT-L/14", (1280, 32): "ViT-H/14", (1664, 48): "ViT-bigG/14"}
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
    hidden = shapes["vision_model.embeddings.class_embedding"][0]
    patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith("vision_model.encoder.layers."))
    side = math.isqrt(positions - 1)
    if side * side != positions - 1 or "visual_projection.weight" not in shapes:
        raise ValueError("position embedding or projection of an unexpected shape")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=layers, num_attention_heads=16 if hidden % 16 == 0 else max(1, hidden // 64),
        patch_size=patch, image_size=side * patch, projection_dim=shapes["visual_projection.weight"][0],
        hidden_act="quick_gelu" if hidden == 1024 else "gelu", layer_norm_eps=1e-5, num_channels=3)


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
                                   "(e.g. clip_vision_g.safetensors) in models/clip_vision")
        return {k: ckpt.load(k) for k in keys if k.startswith(("vision_model.", "visual_projection."))}


def _config_of(path: Path, tensors: Mapping[str, Tensor]) -> CLIPVisionConfig:
    try:
        return vision_config({k: tuple(t.shape) for k, t in tensors.items()})
    except (KeyError, ValueError, IndexError) as exc:
        raise UnsupportedModel(f"{path.name}: CLIP vision weights of an unknown structure ({exc})") from exc


def describe_clip_vision(config: CLIPVisionConfig) -> str:
    name = _NAMES.get((config.hidden_size, config.num_hidden_layers), "CLIP vision")
    return (f"{name} ({config.num_hidden_layers} layers, width {config.hidden_size}, "
            f"{config.image_size}px, embeds {config.projection_dim})")


def _adopt(config: CLIPVisionConfig, tensors: Mapping[str, Tensor], name: str, device: torch.device,
           dtype: torch.dtype) -> CLIPVisionModelWithProjection:
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
        raise UnsupportedModel(f"{name}: the CLIP vision file lacks {len(missing)} weights, e.g. {missing[:4]}")
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def load_clip_vision(file: FileRef, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     prefix: str = "") -> tuple[CLIPVisionModelWithProjection, str]:
    """The CLIP vision tower of ``file`` (under ``prefix``: an OpenCLIP tower inside a checkpoint) on
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
