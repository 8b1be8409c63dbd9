"""Loading the text encoders of SD3 / SD3.5 and Flux.1 into a :class:`~engine.backend.flow_text.FlowTextEncoder`.

Two sources, one layout: a single-file checkpoint keeps its towers under ``text_encoders.clip_l.transformer.``,
``text_encoders.clip_g.transformer.`` and ``text_encoders.t5xxl.transformer.`` (any of them may be absent);
text-encoder files from CLIPLoader / DualCLIPLoader / TripleCLIPLoader arrive as
:class:`~engine.models.handles.TextEncoderFile` entries whose ``tower`` is that same prefix
(:func:`engine.models.parts.flow_clip`), and are read as if they were there. Tensors are converted to the
compute dtype while read and adopted by the models without another copy.

T5's tokenizer is the file kept beside the file holding the T5 weights (the T5-XXL file, or the checkpoint):
:meth:`~engine.backend.t5_tokenizer.T5Tokenizer.for_encoder` searches ``<folder>/<file stem>/``,
``<folder>/t5_tokenizer/`` and ``<folder>/``; it is looked for before any weight is read, so a missing one fails
fast, naming those folders.

T5 files in float8 (``t5xxl_fp8_e4m3fn``, and ComfyUI's ``*_scaled`` with per-layer scales) keep their linear
weights in float8, each layer cast to the compute dtype as it runs (4.9 GB instead of 19 GB in float32).

T5's compute dtype: T5 v1.1 (T5-XXL) overflows float16 activations, so where the manager computes in float16 on a
CUDA device with bfloat16, T5 computes in bfloat16; otherwise in the manager's dtype (float32 on CPUs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel

from engine.backend.cast_weights import cast_at_forward, cast_parameters, set_weight_scales
from engine.backend.flow_text import CLIP_SPECS, FLOW_TOWER_PREFIXES, T5_KEY, FlowTextEncoder
from engine.backend.t5 import T5TextEncoder, build_t5_encoder, convert_t5_state_dict, t5_config_from_state_dict
from engine.backend.t5_tokenizer import T5Tokenizer
from engine.backend.text import ClipTower, has_text_encoder, load_clip_tower
from engine.backend.tokenizer import ClipTokenizer
from engine.models import parts
from engine.models.handles import FileRef, TextEncoderFile
from engine.models.loaders import CheckpointFile
from engine.models.weight_storage import FLOAT8, split_scales, stored_as

__all__ = ["load_flow_text_encoder", "t5_compute_dtype"]

log = logging.getLogger(__name__)

_CHECKPOINT_TEXT = "text_encoders."
_T5_FIRST_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
_NAMES = {"sd3": "SD3", "flux": "Flux"}
_LOADERS = {"sd3": "TripleCLIPLoader (or DualCLIPLoader / CLIPLoader type sd3)", "flux": "DualCLIPLoader type flux"}


def t5_compute_dtype(dtype: torch.dtype, compute_device: torch.device) -> torch.dtype:
    """The dtype T5 computes in when the manager computes in ``dtype`` on ``compute_device`` (module docstring)."""
    if dtype == torch.float16 and compute_device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def _state(ref: FileRef, sources: tuple[TextEncoderFile, ...], dtype: torch.dtype,
           t5_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The towers' tensors under their checkpoint prefixes, each read in the dtype it computes in (so no tensor
    is held twice: the models adopt these)."""
    t5_prefix = FLOW_TOWER_PREFIXES[T5_KEY]
    if sources:
        t5 = tuple(source for source in sources if source.tower == t5_prefix)
        clips = tuple(source for source in sources if source.tower != t5_prefix)
        return {**parts.text_state(clips, dtype), **parts.text_state(t5, t5_dtype, keep_float8=True)}
    with CheckpointFile(ref.path) as ckpt:
        return {key: _t5_stored(ckpt.load(key), t5_dtype) if key.startswith(t5_prefix) else ckpt.load(key, dtype)
                for key in ckpt.keys() if key.startswith(_CHECKPOINT_TEXT)}


def _t5_stored(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A T5 tensor as it is kept: float8 weights stay float8 (cast layer by layer as T5 runs), the rest in
    ``dtype``."""
    return tensor if tensor.dtype in FLOAT8 else tensor.to(dtype)


def _t5_file(ref: FileRef, sources: tuple[TextEncoderFile, ...]) -> Path | None:
    """The file holding the T5 weights (its source file, or the checkpoint); None without a T5."""
    prefix = FLOW_TOWER_PREFIXES[T5_KEY]
    if sources:
        return next((Path(source.file.path) for source in sources if source.tower == prefix), None)
    with CheckpointFile(ref.path) as ckpt:
        return Path(ref.path) if prefix + _T5_FIRST_KEY in ckpt else None


def _clip_towers(state: Mapping[str, torch.Tensor], family: str, dtype: torch.dtype,
                 device: torch.device) -> dict[str, ClipTower]:
    tokenizer = ClipTokenizer()
    towers = {}
    for key, spec in CLIP_SPECS[family].items():
        prefix = FLOW_TOWER_PREFIXES[key]
        if has_text_encoder(state, prefix):
            towers[key] = load_clip_tower(state, prefix, spec, dtype=dtype, device=device, tokenizer=tokenizer)
    return towers


def _t5(state: Mapping[str, torch.Tensor], tokenizer: T5Tokenizer, dtype: torch.dtype,
        device: torch.device) -> T5TextEncoder:
    prefix = FLOW_TOWER_PREFIXES[T5_KEY]
    scales: dict[str, torch.Tensor] = {}
    t5_state = dict(split_scales(((key, value) for key, value in state.items() if key.startswith(prefix)), scales))
    config = t5_config_from_state_dict(t5_state, prefix)
    converted = convert_t5_state_dict(t5_state, prefix)
    float8 = next((tensor.dtype for tensor in converted.values() if tensor.dtype in FLOAT8), None)
    if float8 is None:
        model = build_t5_encoder(config, converted, dtype=dtype, device=device)
    else:
        model = _float8_t5(config, converted, float8, dtype, device)
        if scales:
            set_weight_scales(model, {name[len(prefix):]: scale.to(device) for name, scale in scales.items()})
        log.info("T5 weights kept in %s, each layer cast to %s as it runs", str(float8).removeprefix("torch."),
                 str(dtype).removeprefix("torch."))
    return T5TextEncoder(model, tokenizer)


def _float8_t5(config: T5Config, state: Mapping[str, torch.Tensor], storage: torch.dtype, dtype: torch.dtype,
               device: torch.device) -> T5EncoderModel:
    """T5 with the file's float8 linear weights kept in float8 (engine/models/weight_storage.py), the rest in
    ``dtype``; the layer norms and the token embedding compute as they are."""
    with torch.device("meta"):
        model = T5EncoderModel(config)
    cast_at_forward(model, dtype, strict=False)
    tensors = {name: tensor.to(device) for name, tensor in
               stored_as(state.items(), cast_parameters(model), storage, dtype, from_file=True)}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.encoder.embed_tokens = model.shared
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise ValueError(f"T5 checkpoint is missing {len(missing)} weights, e.g. {missing[:5]}")
    return model.eval().requires_grad_(False)


def load_flow_text_encoder(ref: FileRef, family: str, sources: tuple[TextEncoderFile, ...] = (), *,
                           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           compute_device: torch.device | str | None = None) -> FlowTextEncoder:
    """The SD3 / Flux text encoder of a checkpoint (``ref``, no ``sources``) or of text-encoder files (``sources``),
    built on ``device`` in ``dtype`` (T5: :func:`t5_compute_dtype` for ``compute_device``, default ``device``).

    Raises ValueError naming the file when it holds no text encoders (or, for Flux, not both of CLIP-L and T5),
    and :class:`~engine.backend.t5_tokenizer.T5TokenizerNotFoundError` naming the folders searched when the T5
    has no tokenizer beside it.
    """
    device = torch.device(device)
    t5_dtype = t5_compute_dtype(dtype, torch.device(compute_device) if compute_device is not None else device)
    t5_file = _t5_file(ref, sources)
    tokenizer = T5Tokenizer.for_encoder(t5_file) if t5_file is not None else None  # before any weight is read
    state = _state(ref, sources, dtype, t5_dtype)
    where = " + ".join(dict.fromkeys(Path(source.file.path).name for source in sources)) or ref.name
    towers = _clip_towers(state, family, dtype, device)
    if not towers and tokenizer is None:
        raise ValueError(f"{where} holds no {_NAMES[family]} text encoders (no keys under 'text_encoders.clip_l.', "
                         f"'text_encoders.clip_g.' or 'text_encoders.t5xxl.'); load them with {_LOADERS[family]}")
    t5 = _t5(state, tokenizer, t5_dtype, device) if tokenizer is not None else None
    del state  # the towers hold the tensors they use
    try:
        encoder = FlowTextEncoder(family, clip_l=towers.get("clip_l"), clip_g=towers.get("clip_g"), t5xxl=t5)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}; load them with {_LOADERS[family]}") from None
    log.info("loaded %s text encoders of %s: %s", family, where, ", ".join(encoder.towers.keys()))
    return encoder.requires_grad_(False).eval()
