"""The T5-XXL text encoder of SD3 / SD3.5 and Flux: transformers' T5EncoderModel built from a local config.

File layout (ComfyUI's ``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``, ...): the keys of
an HF T5 encoder, with no prefix::

    shared.weight                                                   token embedding [vocab, d_model]
    encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight         q/k/v [heads * d_kv, d_model], o transposed
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight   [buckets, heads], block 0 only
    encoder.block.N.layer.0.layer_norm.weight                       RMS norm before attention
    encoder.block.N.layer.1.DenseReluDense.wi_0.weight / wi_1.weight   gated GELU (T5 v1.1, T5-XXL)
    encoder.block.N.layer.1.DenseReluDense.wi.weight                ReLU feed-forward (original T5)
    encoder.block.N.layer.1.DenseReluDense.wo.weight
    encoder.block.N.layer.1.layer_norm.weight
    encoder.final_layer_norm.weight

Some files also carry ``encoder.embed_tokens.weight`` (the same tensor as ``shared.weight``), and an
all-in-one SD3 / Flux checkpoint holds the same keys under ``text_encoders.t5xxl.transformer.``.

The config is read from shapes: d_model and the vocabulary from ``shared.weight``, d_ff from the
feed-forward input, the number of heads and of relative-position buckets from
``relative_attention_bias``, d_kv = q rows / heads, the layers from the block indices, gated GELU
(``wi_0``/``wi_1``) or ReLU (``wi``). Not in the shapes, and fixed at T5's values: the relative
attention's max distance 128, the RMS-norm epsilon 1e-6. T5-XXL comes out as d_model 4096, d_ff 10240,
24 layers, 64 heads of 64, 32 buckets, vocabulary 32128.

Weights stored in float16, bfloat16 or (unscaled) float8 are cast to the compute dtype (float32 by
default, which is what the CPU path uses) by :func:`build_t5_encoder`. Files in ComfyUI's *scaled* fp8 format
(a ``scaled_fp8`` key and per-weight ``scale_weight`` tensors) are refused here: the model manager's loader
(engine/models/flow_text_load.py) keeps float8 weights and their scales instead. UMT5 (a relative-attention
bias in every block) is refused too.

Encoding follows ComfyUI for SD3 and Flux: the last hidden state (after the final layer norm), no
attention mask (padding is attended to), and prompt weights applied as for CLIP:
``(z - z_empty) * w + z_empty`` at every token whose weight is not 1.0, where the empty prompt is
``[EOS, PAD, PAD, ...]`` of the same length. Tokenization: engine/backend/t5_tokenizer.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel

from engine.backend.t5_tokenizer import T5_EOS_TOKEN, T5_PAD_TOKEN, T5Tokenizer, T5Tokens

logger = logging.getLogger(__name__)

ShapeSource = Mapping[str, torch.Tensor] | Mapping[str, Sequence[int]]

# Prefixes under which a T5 encoder is found, tried in order ("" is a standalone text-encoder file).
T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "")
RELATIVE_ATTENTION_MAX_DISTANCE = 128
LAYER_NORM_EPSILON = 1e-6

_FIRST_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
_RELATIVE_BIAS = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
_FEED_FORWARD = "encoder.block.0.layer.1.DenseReluDense.{}.weight"
_BLOCK = re.compile(r"encoder\.block\.(\d+)\.")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- layout and config


def _shape(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def find_t5_prefix(keys: Mapping[str, object]) -> str:
    """The prefix under which a T5 encoder's keys are found (``""`` for a standalone file).

    Raises ValueError naming the expected keys when there is no T5 encoder.
    """
    for prefix in T5_PREFIXES:
        if f"{prefix}{_FIRST_Q}" in keys:
            return prefix
    found = sorted({key.split(".", 1)[0] for key in keys})
    raise ValueError(
        f"no T5 text encoder found: expected '{_FIRST_Q}' (optionally under 'text_encoders.t5xxl.transformer.'); "
        f"top-level prefixes found: {found[:12]}"
    )


def is_t5_state_dict(keys: Mapping[str, object]) -> bool:
    """Whether a T5 encoder is present (standalone or inside an all-in-one checkpoint)."""
    return any(f"{prefix}{_FIRST_Q}" in keys for prefix in T5_PREFIXES)


def _block_count(keys: Mapping[str, object], prefix: str) -> int:
    blocks = {
        int(match.group(1))
        for key in keys
        if key.startswith(prefix) and (match := _BLOCK.match(key[len(prefix) :]))
    }
    if not blocks:
        raise ValueError(f"no T5 encoder blocks found under '{prefix}'")
    return max(blocks) + 1


def _embedding_shape(shapes: ShapeSource, prefix: str) -> tuple[int, ...]:
    for name in ("shared.weight", "encoder.embed_tokens.weight"):
        if f"{prefix}{name}" in shapes:
            return _shape(shapes[f"{prefix}{name}"])
    raise ValueError(f"T5 encoder has no token embedding ('{prefix}shared.weight')")


def _feed_forward(shapes: ShapeSource, prefix: str) -> tuple[int, str]:
    """(d_ff, feed_forward_proj) from the first block's feed-forward input weights."""
    gated = f"{prefix}{_FEED_FORWARD.format('wi_0')}"
    if gated in shapes:
        return _shape(shapes[gated])[0], "gated-gelu"
    plain = f"{prefix}{_FEED_FORWARD.format('wi')}"
    if plain in shapes:
        return _shape(shapes[plain])[0], "relu"
    raise ValueError(f"T5 encoder has neither '{gated}' nor '{plain}'")


def t5_config_from_state_dict(shapes: ShapeSource, prefix: str = "") -> T5Config:
    """A T5Config (encoder only) inferred from tensor shapes under ``prefix`` (see the module docstring)."""
    bias_key = f"{prefix}{_RELATIVE_BIAS.format(0)}"
    if bias_key not in shapes:
        raise ValueError(f"T5 encoder has no relative attention bias in block 0 ('{bias_key}')")
    if f"{prefix}{_RELATIVE_BIAS.format(1)}" in shapes:
        raise ValueError("a relative attention bias in every block (UMT5) is not supported; expected T5 / T5 v1.1")
    num_buckets, num_heads = _shape(shapes[bias_key])
    vocab_size, d_model = _embedding_shape(shapes, prefix)
    inner_dim = _shape(shapes[f"{prefix}{_FIRST_Q}"])[0]
    if inner_dim % num_heads:
        raise ValueError(f"T5 attention width {inner_dim} is not a multiple of {num_heads} heads")
    d_ff, feed_forward_proj = _feed_forward(shapes, prefix)
    num_layers = _block_count(shapes, prefix)
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=inner_dim // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=RELATIVE_ATTENTION_MAX_DISTANCE,
        dropout_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        feed_forward_proj=feed_forward_proj,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=T5_PAD_TOKEN,
        eos_token_id=T5_EOS_TOKEN,
    )


def _check_not_scaled_fp8(keys: Mapping[str, object], prefix: str) -> None:
    scaled = f"{prefix}scaled_fp8" in keys or "scaled_fp8" in keys
    if scaled or any(key.startswith(prefix) and key.endswith(".scale_weight") for key in keys):
        raise ValueError(
            "this T5 file is in ComfyUI's scaled fp8 format (scaled_fp8 / scale_weight): its weights mean nothing "
            "without their scales; load it through the model manager (CLIPLoader / DualCLIPLoader / "
            "TripleCLIPLoader, engine/models/flow_text_load.py), which keeps the scales"
        )


def convert_t5_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The encoder's tensors under ``prefix`` in T5EncoderModel's naming (``shared.weight``, ``encoder.*``).

    ``encoder.embed_tokens.weight`` is set to the token embedding (the model uses it in its forward);
    decoder and LM-head weights are ignored. Tensors are returned as they are (no copy).
    """
    _check_not_scaled_fp8(state_dict, prefix)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name == "shared.weight" or (name.startswith("encoder.") and name != "encoder.embed_tokens.weight"):
            out[name] = tensor
    embedding = out.get("shared.weight", state_dict.get(f"{prefix}encoder.embed_tokens.weight"))
    if embedding is None:
        raise ValueError(f"T5 encoder has no token embedding ('{prefix}shared.weight')")
    out["shared.weight"] = embedding
    out["encoder.embed_tokens.weight"] = embedding
    return out


# --------------------------------------------------------------------------- model construction


def build_t5_encoder(
    config: T5Config,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5EncoderModel:
    """T5EncoderModel constructed on the meta device that adopts the given tensors (cast per tensor).

    ``state_dict`` is in T5EncoderModel's naming (:func:`convert_t5_state_dict`). Raises ValueError
    when weights are missing.
    """
    with torch.device("meta"):
        model = T5EncoderModel(config)
    tensors = {key: tensor.to(device=device, dtype=dtype) for key, tensor in state_dict.items()}
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        logger.warning("T5 encoder: ignoring unexpected weights %s", result.unexpected_keys[:8])
    # One embedding module: the encoder's forward reads encoder.embed_tokens, the file stores shared.
    model.encoder.embed_tokens = model.shared
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise ValueError(f"T5 checkpoint is missing {len(missing)} weights, e.g. {missing[:5]}")
    return model.eval().requires_grad_(False)


def load_t5_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors T5 file, on the CPU, in their stored dtype."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


# --------------------------------------------------------------------------- encoding


def _empty_ids(length: int) -> list[int]:
    """ComfyUI's empty T5 prompt of ``length`` tokens: the end token, then padding."""
    return [T5_EOS_TOKEN] + [T5_PAD_TOKEN] * (length - 1)


def apply_token_weights(cond: torch.Tensor, empty: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``(z - z_empty) * w + z_empty`` at every position whose weight is not 1.0 (ComfyUI's rule).

    ``cond`` [L, D] or [1, L, D], ``empty`` the same shape, ``weights`` L values.
    """
    w = torch.tensor(list(weights), dtype=cond.dtype, device=cond.device)
    if w.shape[0] != cond.shape[-2]:
        raise ValueError(f"{w.shape[0]} weights for {cond.shape[-2]} tokens")
    w = w.unsqueeze(-1)
    return torch.where(w != 1.0, (cond - empty) * w + empty, cond)


class T5TextEncoder(nn.Module):
    """A T5 encoder (transformers' T5EncoderModel) with ComfyUI's SD3 / Flux read-out.

    Not re-entrant when embeddings are injected (one call at a time per instance).
    """

    def __init__(self, model: T5EncoderModel, tokenizer: T5Tokenizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, L] (and an optional 0/1 mask [B, L]) -> last hidden state [B, L, d_model], float32.

        ComfyUI encodes SD3 / Flux prompts without a mask; pass one to leave padding out of attention.
        """
        return self._forward(input_ids=input_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def encode_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, L, d_model] -> last hidden state [B, L, d_model], float32."""
        return self._forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask)

    def _forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids is not None:
            input_ids = input_ids.to(self.device, dtype=torch.long)
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.to(self.device, dtype=self.dtype)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        output = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return output.last_hidden_state.float()

    def _token_embeddings(self, tokens: T5Tokens, *, with_empty: bool) -> torch.Tensor:
        """[1 or 2, L, d_model]: the prompt's token embeddings (textual-inversion rows put in), then the
        empty prompt's when ``with_empty``."""
        rows = [tokens.ids, _empty_ids(len(tokens.ids))] if with_empty else [tokens.ids]
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        embeds = self.model.shared(ids)
        for position, vector in tokens.embeddings.items():
            if vector.numel() != self.hidden_size:
                logger.warning("T5: embedding vector of width %d at %d ignored (model width %d)",
                               vector.numel(), position, self.hidden_size)
                continue
            embeds[0, position] = vector.reshape(-1).to(embeds)
        return embeds

    @torch.no_grad()
    def encode_tokens(self, tokens: T5Tokens) -> torch.Tensor:
        """A tokenized prompt -> cond [1, L, d_model] float32, with its weights applied (module docstring)."""
        if not tokens.ids:
            raise ValueError("encode_tokens needs at least one token id")
        if not tokens.has_weights and not tokens.embeddings:
            return self.encode(torch.tensor([tokens.ids], dtype=torch.long))
        hidden = self.encode_embeds(self._token_embeddings(tokens, with_empty=tokens.has_weights))
        if not tokens.has_weights:
            return hidden[:1]
        return apply_token_weights(hidden[:1], hidden[1:2], tokens.weights)


def load_t5_encoder(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    tokenizer: T5Tokenizer | None = None,
) -> T5TextEncoder:
    """Load a T5 encoder file (ComfyUI layout, any float dtype) into a :class:`T5TextEncoder`."""
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"T5 compute dtype must be one of {_FLOAT_DTYPES}, got {dtype}")
    state_dict = load_t5_state_dict(path)
    prefix = find_t5_prefix(state_dict)
    config = t5_config_from_state_dict(state_dict, prefix)
    logger.info("T5 encoder %s: d_model %d, d_ff %d, %d layers, %d heads, vocab %d, %s",
                Path(path).name, config.d_model, config.d_ff, config.num_layers, config.num_heads,
                config.vocab_size, config.feed_forward_proj)
    model = build_t5_encoder(config, convert_t5_state_dict(state_dict, prefix), dtype=dtype, device=device)
    return T5TextEncoder(model, tokenizer)
