"""Loading PhotoMaker v1 ID encoders (models/photomaker) from files, never from a hub.

The official ``photomaker-v1.bin`` is a pickle ``{"id_encoder": {...}, "lora_weights": {...}}`` (read with
``weights_only``); converted ``.safetensors`` files hold the id_encoder's tensors flat, with or without the
``id_encoder.`` prefix. The id_encoder holds a CLIP ViT-L/14 vision tower in transformers' layout
(``vision_model.*``, ``visual_projection.weight``), ``visual_projection_2.weight`` and
``fuse_module.{mlp1,mlp2}.{layernorm,fc1,fc2}.*`` / ``fuse_module.layer_norm.*``. The tower's config comes
from the shapes (:func:`engine.models.clip_vision.vision_config`). The LoRA half is not used (ComfyUI's
PhotoMakerLoader ignores it too).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection

from engine.backend.photomaker import FuseModule, PhotoMakerIDEncoder
from engine.models.clip_vision import describe_clip_vision, vision_config
from engine.models.handles import FileRef
from engine.models.loaders import CheckpointFile, UnsupportedModel

__all__ = ["load_photomaker", "photomaker_tensors"]

_PREFIX = "id_encoder."
_FUSE = "fuse_module."


def photomaker_tensors(path: Path) -> dict[str, Tensor]:
    """The id_encoder's tensors of a PhotoMaker file, without the ``id_encoder.`` prefix."""
    if path.suffix.lower() == ".safetensors":
        with CheckpointFile(path) as ckpt:
            state = {key: ckpt.load(key) for key in ckpt.keys()}
    else:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(loaded, Mapping):
            raise UnsupportedModel(f"{path.name} holds a {type(loaded).__name__}, not a PhotoMaker state dict")
        state = dict(loaded.get("id_encoder", loaded))
    if any(key.startswith(_PREFIX) for key in state):
        state = {key[len(_PREFIX):]: value for key, value in state.items() if key.startswith(_PREFIX)}
    if "visual_projection_2.weight" not in state or _FUSE + "layer_norm.weight" not in state:
        raise UnsupportedModel(f"{path.name} is not a PhotoMaker v1 file: no visual_projection_2 / fuse_module "
                               "weights; put photomaker-v1.bin (or its safetensors) in models/photomaker")
    return state


def _vision(state: Mapping[str, Tensor], name: str) -> tuple[CLIPVisionModelWithProjection, str]:
    tower = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
    try:
        config = vision_config({k: tuple(v.shape) for k, v in tower.items()})
    except (KeyError, ValueError, IndexError) as exc:
        raise UnsupportedModel(f"{name}: a PhotoMaker vision tower of an unknown structure ({exc})") from exc
    model = CLIPVisionModelWithProjection(config)
    result = model.load_state_dict(tower, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise UnsupportedModel(f"{name}: the PhotoMaker vision tower lacks {len(missing)} weights, e.g. {missing[:4]}")
    return model, describe_clip_vision(config)


def _fuse(state: Mapping[str, Tensor], name: str) -> FuseModule:
    fuse = {k[len(_FUSE):]: v for k, v in state.items() if k.startswith(_FUSE)}
    module = FuseModule(int(fuse["layer_norm.weight"].shape[0]))
    try:
        module.load_state_dict(fuse)
    except RuntimeError as exc:
        raise UnsupportedModel(f"{name}: PhotoMaker fuse_module weights of an unexpected shape ({exc})") from exc
    return module


@functools.lru_cache(maxsize=1)
def load_photomaker(file: FileRef) -> tuple[PhotoMakerIDEncoder, str]:
    """The ID encoder of ``file`` (float32, CPU, eval) and a description; cached per file version."""
    path = Path(file.path)
    state = photomaker_tensors(path)
    vision, label = _vision(state, path.name)
    weight = state["visual_projection_2.weight"]
    projection_2 = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projection_2.weight.data.copy_(weight.float())
    size = vision.config.image_size
    encoder = PhotoMakerIDEncoder(vision.vision_model, vision.visual_projection, projection_2, _fuse(state, path.name),
                                  size if isinstance(size, int) else 224).float().eval().requires_grad_(False)
    ids = vision.config.projection_dim + weight.shape[0]
    if ids != encoder.embed_dim:
        raise UnsupportedModel(f"{path.name}: ID embedding width {ids} differs from the fuse module's "
                               f"{encoder.embed_dim}")
    return encoder, f"PhotoMaker v1 ({label}, text width {encoder.embed_dim})"
