"""Tiny SD3 / Flux text encoders written to real files in ComfyUI's layouts, with a tokenizer trained here.

:func:`reference_towers` builds transformers' CLIP-L (``CLIPTextModelWithProjection``: SD3's clip_l files carry
a projection its pooled output must *not* use), CLIP-G (with projection) and a T5 encoder (``T5EncoderModel``)
from hand-written tiny configs with seeded weights. The widths are 64 (CLIP-L), 96 (CLIP-G, projection 80)
and 192 (T5): CLIP-L + CLIP-G = 160 features, padded to the T5's 192. The CLIP towers keep the real vocabulary
(49408) and 77 positions, so Loom's CLIP tokenizer works on them; heads are width / 64 rounded down (Loom's
rule), and the activation quick GELU (Loom's for non-OpenCLIP widths).

:func:`write_checkpoint` writes a single-file SD3 / Flux checkpoint's ``text_encoders.*`` part;
:func:`write_parts` the separate files ComfyUI's loaders read (``clip_l.safetensors``, ``clip_g.safetensors`` in
transformers' layout, the bare-key ``t5xxl_tiny.safetensors``). :func:`train_spiece` trains a unigram
sentencepiece model with T5's special ids (<pad> 0, </s> 1, <unk> 2) in a fraction of a second;
:func:`place_tokenizer` puts it where Loom looks for a T5 file's tokenizer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

CLIP_L_WIDTH, CLIP_G_WIDTH, CLIP_G_PROJECTION, T5_WIDTH = 64, 96, 80, 192
T5_VOCAB = 64
PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
            "t5xxl": "text_encoders.t5xxl.transformer."}
CORPUS = [
    "a red cat sits on a blue mat", "a green dog runs in the park", "the quick brown fox jumps over the lazy dog",
    "a photo of a mountain lake at sunset", "an oil painting of a castle in the clouds",
    "a small robot reading a book", "two birds on a wire under a grey sky", "a bowl of fruit on a wooden table",
]


@dataclass
class Towers:
    clip_l: CLIPTextModelWithProjection
    clip_g: CLIPTextModelWithProjection
    t5: T5EncoderModel


def _seeded(module: torch.nn.Module, seed: int) -> None:
    """Every weight drawn from a seeded normal (norms around 1), so outputs are of order 1 and far from 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            norm = "norm" in name
            noise = torch.randn(parameter.shape, generator=generator) * (0.1 if norm else 0.15)
            parameter.copy_(noise + (1.0 if norm and name.endswith("weight") else 0.0))


def _clip(width: int, projection: int, seed: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=3,
                            num_attention_heads=max(1, width // 64), max_position_embeddings=77,
                            projection_dim=projection, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModelWithProjection(config).eval()
    _seeded(model, seed)
    return model


def _t5(seed: int) -> T5EncoderModel:
    config = T5Config(vocab_size=T5_VOCAB, d_model=T5_WIDTH, d_ff=96, num_layers=3, num_heads=4, d_kv=16,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = T5EncoderModel(config).eval()
    _seeded(model, seed)
    with torch.no_grad():
        model.encoder.embed_tokens.weight.copy_(model.shared.weight)
    return model


def reference_towers(seed: int = 0) -> Towers:
    return Towers(_clip(CLIP_L_WIDTH, 48, seed + 1), _clip(CLIP_G_WIDTH, CLIP_G_PROJECTION, seed + 2), _t5(seed + 3))


def tower_state(towers: Towers, kind: str) -> dict[str, torch.Tensor]:
    """One tower's weights as ComfyUI's standalone files hold them (no position_ids, no encoder.embed_tokens)."""
    model = {"clip_l": towers.clip_l, "clip_g": towers.clip_g, "t5xxl": towers.t5}[kind]
    return {key: value.contiguous() for key, value in model.state_dict().items()
            if not key.endswith("position_ids") and key != "encoder.embed_tokens.weight"}


def write_checkpoint(path: Path, towers: Towers, kinds: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl"),
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """A checkpoint holding ``kinds`` under ``text_encoders.*`` (plus ``extra`` tensors, e.g. a model key)."""
    state = {PREFIXES[kind] + key: value for kind in kinds for key, value in tower_state(towers, kind).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**state, **(extra or {})}, str(path))
    return path


def write_parts(folder: Path, towers: Towers) -> dict[str, Path]:
    """clip_l.safetensors, clip_g.safetensors and t5xxl_tiny.safetensors in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_tiny.safetensors"}
    paths = {}
    for kind, name in names.items():
        paths[kind] = folder / name
        save_file(tower_state(towers, kind), str(paths[kind]))
    return paths


def train_spiece(folder: Path) -> Path:
    """A tiny unigram sentencepiece model (at most T5_VOCAB pieces) with T5's special ids."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "spiece"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(prefix), vocab_size=T5_VOCAB, model_type="unigram",
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def place_tokenizer(spiece: Path, folder: Path) -> Path:
    """Copy the tokenizer to ``folder/t5_tokenizer/spiece.model`` (shared by every T5 file of ``folder``)."""
    target = folder / "t5_tokenizer" / "spiece.model"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spiece, target)
    return target
