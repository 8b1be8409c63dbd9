"""Text encoders of the rectified-flow families: SD3 / SD3.5 (CLIP-L, CLIP-G, T5-XXL) and Flux.1 (CLIP-L, T5-XXL).

:class:`FlowTextEncoder` holds the towers a checkpoint or the CLIP loaders provide, each optional for SD3
(``clip_l`` and ``clip_g`` are :class:`~engine.backend.text.ClipTower`, ``t5xxl`` a
:class:`~engine.backend.t5.T5TextEncoder`), and speaks :class:`~engine.backend.text.TextEncoder`'s interface:
``tokenize(text)`` gives one :class:`~engine.backend.prompt_weights.TokenizedPrompt` per tower and
``encode(tokens)`` the conditioning and the pooled output, float32 on the model's device.

A T5 prompt is one sequence of any length, not 77-token chunks: it travels as a TokenizedPrompt with a single
"chunk" (``ids[0]``; embedding slots ``(0, position)``), so CONDITIONING code and the nodes handle every
tower's tokens alike. A tower given *no* chunks (CLIPTextEncodeSD3's ``empty_padding`` "none") encodes what
ComfyUI encodes for an empty section list: the bare ``[start, end]`` for CLIP, the bare end token for T5.

Read-out, as ComfyUI's SD3ClipModel / FluxClipModel (comfy/text_encoders/sd3_clip.py, flux.py):

- SD3 clip_l: hidden layer -2, no final layer norm, pooled output (last layer, final layer norm, first end
  token) not projected; clip_g: SDXL's (layer -2, projected pooled); both pad like SDXL's (clip_l with the end
  token, clip_g with 0). ``lg = cat(l, g)`` on features (cut to the shorter sequence); a missing clip_l is 768
  zeros in front of g; ``lg`` is padded with zeros to the joint width; ``pooled = cat(l_pooled, g_pooled)``
  with zeros(768) / zeros(1280) for a missing tower. The T5 output follows ``lg`` along the sequence (or stands
  alone). No CLIP tokens at all: no ``lg`` and a zero pooled output; nothing at all: zeros [1, 77, 4096].
- Flux: the conditioning is the T5 output (at least 256 tokens), the pooled output CLIP-L's: last layer,
  final layer norm, not projected (SD1's settings); Flux has no clip_g.
- clip skip (CLIPSetLastLayer) reaches every tower, T5 included, as ComfyUI's ``set_clip_options`` does:
  T5 at ``layer_idx=-k`` is the output of its block ``n - k`` with T5's final layer norm applied.
- CLIPAttentionMultiply scales the CLIP towers' ``self_attn`` projections only (T5 names them otherwise).

The joint width: ComfyUI pads ``lg`` to 4096, T5-XXL's width, and leaves the T5 output as it is. Loom pads
``lg`` to the T5 encoder's width where there is one (4096 for every real T5-XXL, so the same thing) and to 4096
where there is none. A T5 of another width (the tiny test models) thus still joins ``lg`` along the sequence,
where ComfyUI would fail; an ``lg`` wider than the T5 is an error naming both widths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from engine.backend.prompt_weights import EmbeddingLookup, TokenizedPrompt
from engine.backend.t5 import T5TextEncoder
from engine.backend.t5_tokenizer import (
    FLUX_T5_MIN_LENGTH,
    SD3_T5_MIN_LENGTH,
    T5_EMBEDDING_KEY,
    T5_EOS_TOKEN,
    T5Tokens,
    tokenize_t5_prompt,
)
from engine.backend.text import SD1_CLIP_L, SDXL_CLIP_G, AttentionScale, ClipTower, TextEncoder, TowerSpec
from engine.backend.tokenizer import END_TOKEN, OPENAI_PAD_TOKEN, START_TOKEN

logger = logging.getLogger(__name__)

FLOW_TEXT_FAMILIES = ("sd3", "flux")
T5_KEY = T5_EMBEDDING_KEY
#: SD3's clip_l: hidden layer -2 without the final layer norm, pooled output not projected.
SD3_CLIP_L = TowerSpec("clip_l", OPENAI_PAD_TOKEN, -2, layer_norm_hidden=False, projected_pooled=False)
SD3_CLIP_G = SDXL_CLIP_G
#: Flux's clip_l is SD1's (only its pooled output is used).
FLUX_CLIP_L = SD1_CLIP_L
CLIP_SPECS: dict[str, dict[str, TowerSpec]] = {
    "sd3": {"clip_l": SD3_CLIP_L, "clip_g": SD3_CLIP_G},
    "flux": {"clip_l": FLUX_CLIP_L},
}
T5_MIN_LENGTHS = {"sd3": SD3_T5_MIN_LENGTH, "flux": FLUX_T5_MIN_LENGTH}
#: Where single-file SD3 / Flux checkpoints keep each tower (ComfyUI's layout).
FLOW_TOWER_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    T5_KEY: "text_encoders.t5xxl.transformer.",
}
#: The real widths ComfyUI's zeros stand in for: CLIP-L, CLIP-G (features and pooled) and T5-XXL.
CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280
JOINT_WIDTH = 4096
EMPTY_SEQUENCE_LENGTH = 77

Encoded = tuple[torch.Tensor, torch.Tensor]


def no_tokens() -> TokenizedPrompt:
    """A tower's tokens with no chunks at all (CLIPTextEncodeSD3's empty_padding "none" on an empty text)."""
    return TokenizedPrompt(ids=[], weights=[])


def t5_prompt(tokens: T5Tokens) -> TokenizedPrompt:
    """T5 tokens as a one-chunk TokenizedPrompt (the form every tower's tokens take on their way to encode)."""
    return TokenizedPrompt(ids=[list(tokens.ids)], weights=[list(tokens.weights)],
                           embeddings={(0, position): vector for position, vector in tokens.embeddings.items()})


def t5_tokens(prompt: TokenizedPrompt) -> T5Tokens:
    """The one sequence of a T5 TokenizedPrompt (several chunks are read one after another); no chunks: the bare
    end token, ComfyUI's empty T5 section."""
    if not prompt.ids:
        return T5Tokens(ids=[T5_EOS_TOKEN], weights=[1.0])
    offsets = [0]
    for chunk in prompt.ids[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    ids = [token for chunk in prompt.ids for token in chunk]
    weights = [weight for chunk in prompt.weights for weight in chunk]
    embeddings = {offsets[chunk] + position: vector for (chunk, position), vector in prompt.embeddings.items()}
    return T5Tokens(ids=ids, weights=weights, embeddings=embeddings)


@contextmanager
def t5_layer(t5: T5TextEncoder, layer_idx: int | None) -> Iterator[None]:
    """While this context is open, ``t5`` runs its blocks only up to the one ComfyUI reads at ``layer_idx`` (-1 the
    last, -2 the one before, ...; None or beyond the depth: all of them), and T5's final layer norm applies to that
    block's output. The blocks share the position bias block 0 computes, so the ones that run compute exactly what
    they compute in the full stack."""
    if layer_idx is not None and layer_idx >= 0:
        raise ValueError(f"layer_idx must be negative (-1 = last layer), got {layer_idx}")
    stack = t5.model.encoder
    blocks = stack.block
    if layer_idx is None or -layer_idx > len(blocks):
        yield
        return
    stack.block = nn.ModuleList(list(blocks)[: len(blocks) + layer_idx + 1])
    try:
        yield
    finally:
        stack.block = blocks


class FlowTextEncoder(TextEncoder):
    """The text encoders of an SD3 / SD3.5 (clip_l, clip_g, t5xxl, each optional) or Flux (clip_l + t5xxl) model.

    Not re-entrant (like its towers): one encode at a time.
    """

    def __init__(self, family: str, *, clip_l: ClipTower | None = None, clip_g: ClipTower | None = None,
                 t5xxl: T5TextEncoder | None = None) -> None:
        # TextEncoder.__init__ takes CLIP towers only; this one sets the same attributes itself.
        nn.Module.__init__(self)
        if family not in FLOW_TEXT_FAMILIES:
            raise ValueError(f"FlowTextEncoder is for {', '.join(FLOW_TEXT_FAMILIES)}; got family {family!r}")
        if family == "flux" and (clip_l is None or t5xxl is None or clip_g is not None):
            present = [name for name, tower in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5xxl))
                       if tower is not None]
            raise ValueError(f"Flux's text encoders are CLIP-L and T5-XXL; got {', '.join(present) or 'none'}")
        if clip_l is None and clip_g is None and t5xxl is None:
            raise ValueError("an SD3 text encoder needs at least one of CLIP-L, CLIP-G and T5-XXL")
        if t5xxl is not None and t5xxl.tokenizer is None:
            raise ValueError("the T5 text encoder has no tokenizer")
        for key, tower in (("clip_l", clip_l), ("clip_g", clip_g)):
            if tower is not None and tower.spec != CLIP_SPECS[family][key]:
                raise ValueError(f"{family} {key}: tower spec {tower.spec} is not {CLIP_SPECS[family][key]}")
        self.family = family
        towers: dict[str, nn.Module] = {}
        for key, module in (("clip_l", clip_l), ("clip_g", clip_g), (T5_KEY, t5xxl)):
            if module is not None:
                towers[key] = module
        self.towers = nn.ModuleDict(towers)

    # ------------------------------------------------------------------ towers and widths

    def clip_tower(self, key: str) -> ClipTower | None:
        tower = self.towers[key] if key in self.towers else None
        return tower if isinstance(tower, ClipTower) else None

    @property
    def t5(self) -> T5TextEncoder | None:
        tower = self.towers[T5_KEY] if T5_KEY in self.towers else None
        return tower if isinstance(tower, T5TextEncoder) else None

    @property
    def cond_dim(self) -> int:
        """Features of the conditioning: the T5 width, else 4096 (the module docstring's joint width)."""
        return self.t5.hidden_size if self.t5 is not None else JOINT_WIDTH

    @property
    def pooled_dim(self) -> int:
        if self.family == "flux":
            return self._pooled_width("clip_l", CLIP_L_WIDTH)
        return self._pooled_width("clip_l", CLIP_L_WIDTH) + self._pooled_width("clip_g", CLIP_G_WIDTH)

    def _pooled_width(self, key: str, missing: int) -> int:
        tower = self.clip_tower(key)
        return tower.pooled_size if tower is not None else missing

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str, *, embedding_lookup: EmbeddingLookup | None = None) -> dict[str, TokenizedPrompt]:
        """``text`` tokenized once per tower present ("clip_l", "clip_g", "t5xxl")."""
        return {key: self.tokenize_tower(key, text, embedding_lookup=embedding_lookup) for key in self.towers}

    def tokenize_tower(self, key: str, text: str, *, embedding_lookup: EmbeddingLookup | None = None
                       ) -> TokenizedPrompt:
        """One tower's tokens of ``text`` (CLIP: 77-token chunks; T5: one sequence, see the module docstring)."""
        tower = self.towers[key]
        if isinstance(tower, ClipTower):
            return tower.tokenize(text, embedding_lookup=embedding_lookup)
        assert isinstance(tower, T5TextEncoder) and tower.tokenizer is not None
        tokens = tokenize_t5_prompt(text, tower.tokenizer, min_length=T5_MIN_LENGTHS[self.family],
                                    embedding_lookup=embedding_lookup, encoder_key=T5_KEY)
        return t5_prompt(tokens)

    # ------------------------------------------------------------------ encoding

    def encode(
        self, tokens: Mapping[str, TokenizedPrompt], *, layer_idx: int | None = None,
        attention_scale: AttentionScale | None = None,
    ) -> Encoded:
        """(cond [1, L, cond_dim], pooled [1, pooled_dim]) float32 on the model's device (module docstring)."""
        if self.family == "flux":
            return self._encode_flux(tokens, layer_idx, attention_scale)
        return self._encode_sd3(tokens, layer_idx, attention_scale)

    def _encode_clip(self, tower: ClipTower, prompt: TokenizedPrompt, layer_idx: int | None,
                     attention_scale: AttentionScale | None) -> Encoded:
        if not prompt.ids:  # ComfyUI encodes the bare [start, end] for a tower given no chunks
            return tower.encode_tokens([[START_TOKEN, END_TOKEN]], layer_idx=layer_idx,
                                       attention_scale=attention_scale)
        return tower.encode(prompt, layer_idx=layer_idx, attention_scale=attention_scale)

    def _encode_t5(self, t5: T5TextEncoder, prompt: TokenizedPrompt, layer_idx: int | None) -> torch.Tensor:
        with t5_layer(t5, layer_idx):
            return t5.encode_tokens(t5_tokens(prompt))

    def _encode_flux(self, tokens: Mapping[str, TokenizedPrompt], layer_idx: int | None,
                     attention_scale: AttentionScale | None) -> Encoded:
        clip_l, t5 = self.clip_tower("clip_l"), self.t5
        assert clip_l is not None and t5 is not None  # checked in __init__
        cond = self._encode_t5(t5, tokens[T5_KEY], layer_idx)
        _, pooled = self._encode_clip(clip_l, tokens["clip_l"], layer_idx, attention_scale)
        return cond, pooled

    def _encode_sd3(self, tokens: Mapping[str, TokenizedPrompt], layer_idx: int | None,
                    attention_scale: AttentionScale | None) -> Encoded:
        device = self._device
        lg, pooled = self._encode_lg(tokens, layer_idx, attention_scale)
        t5 = self.t5
        if t5 is not None:
            t5_out = self._encode_t5(t5, tokens[T5_KEY], layer_idx).to(device)
            return (t5_out if lg is None else torch.cat([lg, t5_out], dim=-2)), pooled
        if lg is None:
            return torch.zeros(1, EMPTY_SEQUENCE_LENGTH, JOINT_WIDTH, device=device), pooled
        return lg, pooled

    def _encode_lg(self, tokens: Mapping[str, TokenizedPrompt], layer_idx: int | None,
                   attention_scale: AttentionScale | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """SD3's CLIP part: (lg [1, L, cond_dim] or None when no CLIP tower has tokens, pooled [1, pooled_dim])."""
        device = self._device
        clip_l, clip_g = self.clip_tower("clip_l"), self.clip_tower("clip_g")
        present = [(key, tower) for key, tower in (("clip_l", clip_l), ("clip_g", clip_g)) if tower is not None]
        if not any(tokens[key].ids for key, _ in present):
            return None, torch.zeros(1, self.pooled_dim, device=device)
        l_out = g_out = None
        l_pooled = torch.zeros(1, CLIP_L_WIDTH, device=device)
        g_pooled = torch.zeros(1, CLIP_G_WIDTH, device=device)
        if clip_l is not None:
            l_out, l_pooled = self._encode_clip(clip_l, tokens["clip_l"], layer_idx, attention_scale)
        if clip_g is not None:
            g_out, g_pooled = self._encode_clip(clip_g, tokens["clip_g"], layer_idx, attention_scale)
        if l_out is not None and g_out is not None:
            length = min(l_out.shape[1], g_out.shape[1])
            lg = torch.cat([l_out[:, :length], g_out[:, :length]], dim=-1)
        elif g_out is not None:
            lg = F.pad(g_out, (CLIP_L_WIDTH, 0))
        else:
            assert l_out is not None
            lg = l_out
        width = self.cond_dim
        if lg.shape[-1] > width:
            raise ValueError(f"SD3 text encoders: the CLIP-L + CLIP-G features ({lg.shape[-1]} wide) do not fit the "
                             f"T5 encoder's width ({width}); these towers do not belong together")
        return F.pad(lg, (0, width - lg.shape[-1])), torch.cat([l_pooled, g_pooled], dim=-1)
