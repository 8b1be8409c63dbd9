"""Text encoders of SD1.x, SD2.x and SDXL: transformers' CLIPTextModel(WithProjection) built from a local config.

Checkpoint layouts (prefix -> encoder):

- SD1.x  `cond_stage_model.transformer.[text_model.]*`                       OpenAI CLIP-L, HF layout
- SD2.x  `cond_stage_model.model.*`                                          OpenCLIP ViT-H
- SDXL   `conditioner.embedders.0.transformer.text_model.*` (CLIP-L, HF) and `conditioner.embedders.1.model.*` (bigG)
- SDXL refiner `conditioner.embedders.0.model.*`                             OpenCLIP bigG

Both layouts are brought to one canonical HF naming (`text_model.*`, `text_projection.weight`) by
`convert_text_encoder_state_dict`; OpenCLIP's fused `attn.in_proj_*` is split into q/k/v and its
`text_projection` ([width, dim], used as `x @ P`) is transposed into a Linear weight.

Loading never holds two copies of the weights: the model is constructed on the meta device (no
storage), and `load_state_dict(assign=True)` adopts the checkpoint tensors themselves (q/k/v are views
of the fused OpenCLIP tensor). A copy is made only where the dtype or device must change, per tensor.
`position_ids` in checkpoints are ignored (some are stored as imprecise floats): positions are always
0..76, which is what ComfyUI computes with.

Encoding follows ComfyUI (comfy/sd1_clip.py, sdxl_clip.py, sd2_clip.py):

- clip skip: `layer_idx=-k` takes hidden state `hidden_states[-k]` (the output of the k-th layer from
  the end); `-1` is the last layer. An index beyond the number of layers means the last layer.
  SD1 and SD2 apply the final layer norm to that hidden state; SDXL's clip_l and clip_g do not.
  Defaults: SD1 last layer; SD2, SDXL and the refiner the penultimate layer (-2).
- pooled output: final layer + final layer norm, at the first end token (49407), then the text
  projection where the model has one (SD2, SDXL clip_g); SD1's pooled output is not projected.
  Only the first chunk's pooled output is returned.
- weights: all chunks and the empty prompt (`[start, end, pad...]`) are encoded in one batch; every
  token whose weight is not 1.0 becomes `(z - z_empty) * w + z_empty`, position by position.
- chunks are concatenated along the token axis; SDXL concatenates clip_l (768) and clip_g (1280)
  features into 2048 and takes the pooled output from clip_g.

Outputs are float32 on the model's device. ComfyUI computes its text encoders in float32; a model
loaded in float16/bfloat16 (GPU) is faster and close, not bit-equal.

Attention multipliers (CLIPAttentionMultiply): `attention_scale=(q, k, v, out)` multiplies the weights and
biases of every self-attention `q_proj` / `k_proj` / `v_proj` / `out_proj` for that call only, through
`torch.func.functional_call` (scaled copies of those parameters; the stored weights are never changed).

A tower is not re-entrant: embeddings are injected with a forward hook on the token embedding for the
duration of one call, so one model must not encode from two threads at once.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.backend.prompt_weights import EmbeddingLookup, TokenizedPrompt, tokenize_prompt
from engine.backend.tokenizer import (
    END_TOKEN,
    OPENAI_PAD_TOKEN,
    OPENCLIP_PAD_TOKEN,
    START_TOKEN,
    ClipTokenizer,
)

logger = logging.getLogger(__name__)

ClipModel = CLIPTextModel | CLIPTextModelWithProjection
ShapeSource = Mapping[str, torch.Tensor] | Mapping[str, Sequence[int]]

HEAD_DIM = 64
_LAYER_NORM_EPS = 1e-5
# OpenCLIP text towers (ViT-H width 1024, bigG width 1280) use exact GELU; OpenAI's CLIP-L quick GELU.
_OPENCLIP_WIDTHS = (1024, 1280)

_OPENCLIP_LAYER_KEYS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPENCLIP_FUSED_KEYS = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_OPENCLIP_GLOBAL_KEYS = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class TowerSpec:
    """How one text encoder of a family is tokenized and read out (ComfyUI's per-model settings)."""

    key: str  # "clip_l" | "clip_h" | "clip_g": the name used for embeddings and in TextEncoder.towers
    pad_token: int
    default_layer_idx: int | None  # None: the last layer (with final layer norm)
    layer_norm_hidden: bool  # apply the final layer norm to a hidden layer picked by clip skip
    projected_pooled: bool  # pooled output goes through text_projection (when the model has one)


SD1_CLIP_L = TowerSpec("clip_l", OPENAI_PAD_TOKEN, None, layer_norm_hidden=True, projected_pooled=False)
SD2_CLIP_H = TowerSpec("clip_h", OPENCLIP_PAD_TOKEN, -2, layer_norm_hidden=True, projected_pooled=True)
SDXL_CLIP_L = TowerSpec("clip_l", OPENAI_PAD_TOKEN, -2, layer_norm_hidden=False, projected_pooled=True)
SDXL_CLIP_G = TowerSpec("clip_g", OPENCLIP_PAD_TOKEN, -2, layer_norm_hidden=False, projected_pooled=True)


@dataclass(frozen=True)
class TowerLayout:
    prefix: str  # where the encoder's keys start in a checkpoint
    spec: TowerSpec


# Families, their encoders in feature-concatenation order; the last one gives the pooled output.
FAMILY_LAYOUTS: dict[str, tuple[TowerLayout, ...]] = {
    "sd1": (TowerLayout("cond_stage_model.transformer.", SD1_CLIP_L),),
    "sd2": (TowerLayout("cond_stage_model.model.", SD2_CLIP_H),),
    "sdxl": (
        TowerLayout("conditioner.embedders.0.transformer.", SDXL_CLIP_L),
        TowerLayout("conditioner.embedders.1.model.", SDXL_CLIP_G),
    ),
    "sdxl_refiner": (TowerLayout("conditioner.embedders.0.model.", SDXL_CLIP_G),),
}


# --------------------------------------------------------------------------- layouts and config


def _shape(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def is_openclip_layout(keys: Mapping[str, object], prefix: str) -> bool:
    return f"{prefix}transformer.resblocks.0.ln_1.weight" in keys or f"{prefix}ln_final.weight" in keys


def _hf_inner_prefix(keys: Mapping[str, object], prefix: str) -> str:
    """`prefix + "text_model."` when the keys carry it, else `prefix` (SD1 files without text_model.)."""
    with_text_model = f"{prefix}text_model."
    if any(key.startswith(with_text_model) for key in keys):
        return with_text_model
    return prefix


def has_text_encoder(keys: Mapping[str, object], prefix: str) -> bool:
    if is_openclip_layout(keys, prefix):
        return True
    inner = _hf_inner_prefix(keys, prefix)
    return f"{inner}embeddings.token_embedding.weight" in keys


def detect_text_encoder_family(keys: Mapping[str, object]) -> str:
    """The family ("sd1", "sd2", "sdxl", "sdxl_refiner") whose text encoder keys are present."""
    for family in ("sdxl", "sdxl_refiner", "sd2", "sd1"):
        if all(has_text_encoder(keys, layout.prefix) for layout in FAMILY_LAYOUTS[family]):
            return family
    prefixes = sorted({key.split(".", 1)[0] for key in keys})
    raise ValueError(
        "no SD1/SD2/SDXL text encoder found in this checkpoint: expected keys under "
        "'cond_stage_model.transformer.', 'cond_stage_model.model.' or 'conditioner.embedders.N.'; "
        f"top-level prefixes found: {prefixes[:12]}"
    )


def clip_config_from_state_dict(
    shapes: ShapeSource,
    prefix: str,
    *,
    num_heads: int | None = None,
    hidden_act: str | None = None,
) -> CLIPTextConfig:
    """A CLIPTextConfig inferred from tensor shapes under `prefix` (either layout).

    `shapes` maps keys to tensors or shapes. Heads default to width / 64 (true of CLIP-L, ViT-H and
    bigG); `hidden_act` defaults to quick_gelu for OpenAI CLIP and gelu for OpenCLIP towers.
    """
    if is_openclip_layout(shapes, prefix):
        token = _shape(shapes[f"{prefix}token_embedding.weight"])
        positions = _shape(shapes[f"{prefix}positional_embedding"])[0]
        intermediate = _shape(shapes[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"])[0]
        layer_pattern = re.compile(re.escape(f"{prefix}transformer.resblocks.") + r"(\d+)\.")
        projection = shapes.get(f"{prefix}text_projection")
        projection_dim = _shape(projection)[1] if projection is not None else token[1]
        default_act = "gelu"
    else:
        inner = _hf_inner_prefix(shapes, prefix)
        token = _shape(shapes[f"{inner}embeddings.token_embedding.weight"])
        positions = _shape(shapes[f"{inner}embeddings.position_embedding.weight"])[0]
        intermediate = _shape(shapes[f"{inner}encoder.layers.0.mlp.fc1.weight"])[0]
        layer_pattern = re.compile(re.escape(f"{inner}encoder.layers.") + r"(\d+)\.")
        projection = shapes.get(f"{prefix}text_projection.weight")
        projection_dim = _shape(projection)[0] if projection is not None else token[1]
        default_act = "gelu" if token[1] in _OPENCLIP_WIDTHS else "quick_gelu"
    layers = {int(match.group(1)) for key in shapes if (match := layer_pattern.match(key))}
    if not layers:
        raise ValueError(f"no transformer layers found under '{prefix}'")
    vocab_size, hidden = token
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        projection_dim=projection_dim,
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=num_heads if num_heads is not None else max(1, hidden // HEAD_DIM),
        max_position_embeddings=positions,
        hidden_act=hidden_act if hidden_act is not None else default_act,
        layer_norm_eps=_LAYER_NORM_EPS,
        bos_token_id=START_TOKEN,
        eos_token_id=END_TOKEN,
        pad_token_id=OPENAI_PAD_TOKEN,
    )


def _convert_openclip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in _OPENCLIP_GLOBAL_KEYS:
            yield _OPENCLIP_GLOBAL_KEYS[name], tensor
        elif name == "text_projection":
            yield "text_projection.weight", tensor.t().contiguous()
        elif match := _RESBLOCK.fullmatch(name):
            layer, rest = match.groups()
            target = f"text_model.encoder.layers.{layer}."
            if rest in _OPENCLIP_LAYER_KEYS:
                yield target + _OPENCLIP_LAYER_KEYS[rest], tensor
            elif rest in _OPENCLIP_FUSED_KEYS:
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                    yield f"{target}self_attn.{projection}.{_OPENCLIP_FUSED_KEYS[rest]}", part
            else:
                logger.debug("ignoring unknown OpenCLIP text key %s", key)
        else:
            logger.debug("ignoring OpenCLIP text key %s", key)


def _convert_hf(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    inner = _hf_inner_prefix(state_dict, prefix)
    projection_key = f"{prefix}text_projection.weight"
    for key, tensor in state_dict.items():
        if key == projection_key:
            yield "text_projection.weight", tensor
        elif key.startswith(inner):
            name = key[len(inner) :]
            if name.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
                yield "text_model." + name, tensor


def convert_text_encoder_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The text encoder under `prefix`, in canonical HF naming (`text_model.*`, `text_projection.weight`).

    Handles OpenAI CLIP in HF layout (with or without `text_model.`) and OpenCLIP
    (`token_embedding`, `positional_embedding`, `transformer.resblocks.N.*`, `ln_final`,
    `text_projection`). Tensors are returned as they are or as views; `position_ids` are dropped.
    """
    convert = _convert_openclip if is_openclip_layout(state_dict, prefix) else _convert_hf
    converted = {key: tensor for key, tensor in convert(state_dict, prefix) if not key.endswith("position_ids")}
    if not converted:
        raise ValueError(f"no text encoder weights under '{prefix}'")
    return converted


TensorMaker = tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]


def checkpoint_tensors(model: nn.Module, openclip: bool) -> list[TensorMaker]:
    """The inverse of :func:`convert_text_encoder_state_dict`: a tower's weights in a checkpoint's layout
    (without the tower's prefix), as ``(key, shape, make)``; ``make`` builds the tensor when called (so a
    saver holds one at a time). OpenCLIP: q/k/v fused into ``attn.in_proj_*``, ``text_projection``
    transposed, ``positional_embedding``, ``token_embedding``, ``ln_final`` and ``logit_scale``; HF:
    ``text_model.*``, the int64 ``position_ids`` SD checkpoints carry, and ``text_projection.weight`` when
    the tower has one."""
    params = {(key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"): value
              for key, value in model.state_dict().items() if not key.endswith("position_ids")}
    out: list[TensorMaker] = []

    def same(key: str) -> Callable[[], torch.Tensor]:
        return lambda: params[key]

    if not openclip:
        positions = next(t for k, t in params.items() if k.endswith("position_embedding.weight")).shape[0]
        out.append(("text_model.embeddings.position_ids", (1, positions),
                    lambda: torch.arange(positions, dtype=torch.int64)[None]))
        return out + [(key, tuple(value.shape), same(key)) for key, value in params.items()]
    # OpenCLIP's contrastive temperature, which Loom does not use; SD checkpoints carry its clamp, ln 100.
    out.append(("logit_scale", (), lambda: torch.tensor(math.log(100.0))))
    global_keys = {canonical: name for name, canonical in _OPENCLIP_GLOBAL_KEYS.items()}
    layer_keys = {canonical: name for name, canonical in _OPENCLIP_LAYER_KEYS.items()}
    for key, value in params.items():
        if key in global_keys:
            out.append((global_keys[key], tuple(value.shape), same(key)))
        elif key == "text_projection.weight":
            out.append(("text_projection", (value.shape[1], value.shape[0]), functools.partial(torch.t, value)))
        elif match := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            layer, rest = match.groups()
            target = f"transformer.resblocks.{layer}."
            if rest in layer_keys:
                out.append((target + layer_keys[rest], tuple(value.shape), same(key)))
            elif rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]
                parts = [params[f"text_model.encoder.layers.{layer}.self_attn.{p}.{kind}"]
                         for p in ("q_proj", "k_proj", "v_proj")]
                fused = "attn.in_proj_weight" if kind == "weight" else "attn.in_proj_bias"
                shape = (3 * value.shape[0], *value.shape[1:])
                out.append((target + fused, shape, functools.partial(torch.cat, parts)))
    return out


# --------------------------------------------------------------------------- model construction


def _module_key(canonical: str, module_keys: set[str]) -> str:
    """Map a canonical key to the model's own name (transformers 5's CLIPTextModel drops `text_model.`)."""
    if canonical in module_keys:
        return canonical
    stripped = canonical.removeprefix("text_model.")
    if stripped in module_keys:
        return stripped
    raise KeyError(f"text encoder weight '{canonical}' has no place in the model")


def build_clip_model(
    config: CLIPTextConfig,
    canonical_state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ClipModel:
    """Construct the HF model on the meta device and adopt the given tensors (no second copy)."""
    with_projection = "text_projection.weight" in canonical_state_dict
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = model_class(config)
    module_keys = set(model.state_dict().keys())
    tensors = {
        _module_key(key, module_keys): tensor.to(device=device, dtype=dtype)
        for key, tensor in canonical_state_dict.items()
    }
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        logger.warning("text encoder: ignoring unexpected weights %s", result.unexpected_keys[:8])
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name.endswith("position_ids"):
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            positions = torch.arange(config.max_position_embeddings, device=device).unsqueeze(0)
            owner.register_buffer("position_ids", positions, persistent=False)
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise ValueError(f"text encoder checkpoint is missing {len(missing)} weights, e.g. {missing[:5]}")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- encoding


def _text_transformer(model: ClipModel) -> nn.Module:
    """The module holding embeddings / encoder / final_layer_norm, whatever the transformers version."""
    return getattr(model, "text_model", model)


class ClipTower(nn.Module):
    """One CLIP text encoder with the tokenizer settings and read-out rules of its family."""

    def __init__(self, model: ClipModel, spec: TowerSpec, tokenizer: ClipTokenizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        base = tokenizer if tokenizer is not None else ClipTokenizer()
        self.tokenizer = base if base.pad_token == spec.pad_token else base.with_pad_token(spec.pad_token)

    @property
    def text_model(self) -> nn.Module:
        """Embeddings, encoder layers and final layer norm (for patching by attribute)."""
        return _text_transformer(self.model)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def pooled_size(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        if self.spec.projected_pooled and projection is not None:
            return int(projection.weight.shape[0])
        return self.hidden_size

    def tokenize(self, text: str, *, embedding_lookup: EmbeddingLookup | None = None) -> TokenizedPrompt:
        return tokenize_prompt(text, self.tokenizer, embedding_lookup=embedding_lookup, encoder_key=self.spec.key)

    def encode(self, prompt: TokenizedPrompt, *, layer_idx: int | None = None,
               attention_scale: AttentionScale | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(prompt.ids, prompt.weights, layer_idx=layer_idx, embeddings=prompt.embeddings,
                                  attention_scale=attention_scale)

    def encode_tokens(
        self,
        token_chunks: Sequence[Sequence[int]],
        weights: Sequence[Sequence[float]] | None = None,
        *,
        layer_idx: int | None = None,
        embeddings: Mapping[tuple[int, int], torch.Tensor] | None = None,
        attention_scale: AttentionScale | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode chunks of 77 ids -> (cond [1, 77 * chunks, hidden], pooled [1, pooled_size]), float32.

        `layer_idx`: None for the family default, or -1, -2, ... (clip skip, CLIPSetLastLayer).
        `embeddings`: (chunk, position) -> [hidden] vectors replacing those token embeddings.
        `attention_scale`: (q, k, v, out) multipliers of the self-attention projections (module docstring).
        """
        if layer_idx is not None and layer_idx >= 0:
            raise ValueError(f"layer_idx must be negative (-1 = last layer), got {layer_idx}")
        if not token_chunks:
            raise ValueError("encode_tokens needs at least one chunk of token ids")
        chunks = [list(chunk) for chunk in token_chunks]
        vectors = dict(embeddings or {})
        if vectors:
            chunks, vectors = self._drop_mismatched_embeddings(chunks, vectors)
        weighted = weights is not None and any(weight != 1.0 for chunk in weights for weight in chunk)
        if weighted:
            empty = [START_TOKEN, END_TOKEN] + [self.spec.pad_token] * (len(chunks[0]) - 2)
            chunks.append(empty)
        hidden, pooled = self._forward(chunks, vectors, layer_idx, attention_scale)
        count = len(token_chunks)
        cond = hidden[:count]
        if weighted and weights is not None:
            cond = _apply_weights(cond, hidden[count], weights)
        return cond.reshape(1, -1, cond.shape[-1]), pooled[:1]

    def _drop_mismatched_embeddings(
        self, chunks: list[list[int]], vectors: dict[tuple[int, int], torch.Tensor]
    ) -> tuple[list[list[int]], dict[tuple[int, int], torch.Tensor]]:
        """Remove embedding slots whose width is wrong; later tokens shift left, padding fills in (ComfyUI)."""
        kept: dict[tuple[int, int], torch.Tensor] = {}
        for chunk_index, chunk in enumerate(chunks):
            slots = sorted(position for index, position in vectors if index == chunk_index)
            dropped = 0
            for position in slots:
                vector = vectors[(chunk_index, position)]
                if vector.shape[-1] != self.hidden_size:
                    logger.warning(
                        "%s: embedding of width %d ignored (encoder width %d)",
                        self.spec.key,
                        vector.shape[-1],
                        self.hidden_size,
                    )
                    del chunk[position - dropped]
                    chunk.append(self.spec.pad_token)
                    dropped += 1
                else:
                    kept[(chunk_index, position - dropped)] = vector
        return chunks, kept

    def _forward(
        self, chunks: list[list[int]], vectors: Mapping[tuple[int, int], torch.Tensor], layer_idx: int | None,
        attention_scale: AttentionScale | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # transformers is untyped: name the submodule's type
        token_embedding = cast(nn.Embedding, self.text_model.get_submodule("embeddings.token_embedding"))
        input_ids = torch.tensor(chunks, dtype=torch.long, device=token_embedding.weight.device)
        hook = None
        if vectors:
            hook = token_embedding.register_forward_hook(_replace_rows(vectors))
        try:
            with torch.no_grad():
                inputs = {"input_ids": input_ids, "output_hidden_states": True}
                scaled = scaled_attention_parameters(self.model, attention_scale)
                if scaled:
                    outputs = torch.func.functional_call(self.model, scaled, (), inputs)
                else:
                    outputs = self.model(**inputs)
                hidden = self._select_hidden(outputs, layer_idx)
                pooled = self._pool(outputs.last_hidden_state, input_ids)
        finally:
            if hook is not None:
                hook.remove()
        return hidden.float(), pooled.float()

    def _select_hidden(self, outputs: object, layer_idx: int | None) -> torch.Tensor:
        index = self.spec.default_layer_idx if layer_idx is None else layer_idx
        if index is None or abs(index) > self.num_layers:
            return outputs.last_hidden_state  # type: ignore[attr-defined]
        hidden = outputs.hidden_states[index]  # type: ignore[attr-defined]
        if self.spec.layer_norm_hidden:
            hidden = self.text_model.get_submodule("final_layer_norm")(hidden)
        return hidden

    def _pool(self, last_hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        end_positions = (input_ids == END_TOKEN).int().argmax(dim=-1)
        pooled = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), end_positions]
        projection = getattr(self.model, "text_projection", None)
        if self.spec.projected_pooled and projection is not None:
            pooled = projection(pooled)
        return pooled


#: (q, k, v, out) multipliers of the self-attention projections (CLIPAttentionMultiply).
AttentionScale = tuple[float, float, float, float]
_ATTENTION_PROJECTIONS = ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "self_attn.out_proj.")


def scaled_attention_parameters(model: nn.Module, scale: AttentionScale | None) -> dict[str, torch.Tensor]:
    """Scaled copies of the self-attention projection weights and biases whose multiplier is not 1."""
    if scale is None or all(factor == 1.0 for factor in scale):
        return {}
    scaled: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        for projection, factor in zip(_ATTENTION_PROJECTIONS, scale, strict=True):
            if factor != 1.0 and projection in name and name.endswith((".weight", ".bias")):
                scaled[name] = parameter * factor
    return scaled


def _replace_rows(vectors: Mapping[tuple[int, int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A forward hook for the token embedding that puts `vectors` at their (batch, position) slots."""
    batch_index = torch.tensor([index for index, _ in vectors])
    positions = torch.tensor([position for _, position in vectors])
    stacked = torch.stack([vector.reshape(-1) for vector in vectors.values()])

    def hook(module: nn.Module, args: tuple[object, ...], output: torch.Tensor) -> torch.Tensor:
        replaced = output.clone()
        replaced[batch_index.to(output.device), positions.to(output.device)] = stacked.to(output)
        return replaced

    return hook


def _apply_weights(cond: torch.Tensor, empty: torch.Tensor, weights: Sequence[Sequence[float]]) -> torch.Tensor:
    """`(z - z_empty) * w + z_empty` at every token whose weight is not 1.0."""
    w = torch.tensor([list(chunk) for chunk in weights], dtype=cond.dtype, device=cond.device)
    if w.shape != cond.shape[:2]:
        raise ValueError(f"weights have shape {tuple(w.shape)}, token chunks {tuple(cond.shape[:2])}")
    w = w.unsqueeze(-1)
    return torch.where(w != 1.0, (cond - empty) * w + empty, cond)


# --------------------------------------------------------------------------- family-level encoder


class TextEncoder(nn.Module):
    """The text encoder(s) of one checkpoint: SD1 (clip_l), SD2 (clip_h), SDXL (clip_l + clip_g), refiner (clip_g)."""

    def __init__(self, family: str, towers: Sequence[ClipTower]) -> None:
        super().__init__()
        if not towers:
            raise ValueError("a TextEncoder needs at least one tower")
        self.family = family
        self.towers = nn.ModuleDict({tower.spec.key: tower for tower in towers})

    def _ordered(self) -> list[ClipTower]:
        return [tower for tower in self.towers.values() if isinstance(tower, ClipTower)]

    @property
    def cond_dim(self) -> int:
        return sum(tower.hidden_size for tower in self._ordered())

    @property
    def pooled_dim(self) -> int:
        return self._ordered()[-1].pooled_size

    def tokenize(self, text: str, *, embedding_lookup: EmbeddingLookup | None = None) -> dict[str, TokenizedPrompt]:
        """Tokenize `text` once per tower (they differ in padding and embedding vectors)."""
        return {tower.spec.key: tower.tokenize(text, embedding_lookup=embedding_lookup) for tower in self._ordered()}

    def encode(
        self, tokens: Mapping[str, TokenizedPrompt], *, layer_idx: int | None = None,
        attention_scale: AttentionScale | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, 77 * chunks, cond_dim], pooled [1, pooled_dim]), float32 on the model's device;
        ``attention_scale`` multiplies every tower's self-attention projections (CLIPAttentionMultiply)."""
        outputs = [tower.encode(tokens[tower.spec.key], layer_idx=layer_idx, attention_scale=attention_scale)
                   for tower in self._ordered()]
        length = min(cond.shape[1] for cond, _ in outputs)
        cond = torch.cat([cond[:, :length] for cond, _ in outputs], dim=-1)
        return cond, outputs[-1][1]

    def encode_text(
        self, text: str, *, layer_idx: int | None = None, embedding_lookup: EmbeddingLookup | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(self.tokenize(text, embedding_lookup=embedding_lookup), layer_idx=layer_idx)


def load_clip_tower(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str,
    spec: TowerSpec,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    tokenizer: ClipTokenizer | None = None,
    num_heads: int | None = None,
) -> ClipTower:
    """One encoder from the keys under `prefix` (either layout)."""
    config = clip_config_from_state_dict(state_dict, prefix, num_heads=num_heads)
    model = build_clip_model(config, convert_text_encoder_state_dict(state_dict, prefix), dtype=dtype, device=device)
    return ClipTower(model, spec, tokenizer)


def load_text_encoder(
    state_dict: Mapping[str, torch.Tensor],
    family: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    num_heads: int | None = None,
) -> TextEncoder:
    """The text encoder(s) of a full checkpoint state dict; `family` is detected when not given."""
    family = family if family is not None else detect_text_encoder_family(state_dict)
    if family not in FAMILY_LAYOUTS:
        raise ValueError(f"unknown text encoder family '{family}'; expected one of {sorted(FAMILY_LAYOUTS)}")
    tokenizer = ClipTokenizer()
    towers = [
        load_clip_tower(
            state_dict, layout.prefix, layout.spec, dtype=dtype, device=device, tokenizer=tokenizer, num_heads=num_heads
        )
        for layout in FAMILY_LAYOUTS[family]
    ]
    logger.info("loaded %s text encoder: %s", family, ", ".join(tower.spec.key for tower in towers))
    return TextEncoder(family, towers)
