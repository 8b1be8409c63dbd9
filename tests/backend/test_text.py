"""Text encoders: key layouts, config inference, clip skip, pooling, weighting, embeddings.

References are independent of the code under test: transformers' CLIPTextModel built directly from
a hand-written config (SD1 / SDXL clip_l), and a small OpenCLIP-style text tower written here on
torch.nn.MultiheadAttention, which stores `in_proj_weight` / `in_proj_bias` / `out_proj` exactly as
OpenCLIP checkpoints do (SD2 / SDXL clip_g).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from engine.backend.prompt_weights import tokenize_prompt
from engine.backend.text import (
    SD1_CLIP_L,
    ClipTower,
    build_clip_model,
    clip_config_from_state_dict,
    convert_text_encoder_state_dict,
    detect_text_encoder_family,
    load_clip_tower,
    load_text_encoder,
)
from engine.backend.tokenizer import END_TOKEN, START_TOKEN
from tests.support.data import SD15_CHECKPOINT_KEYS

VOCAB = 49408
CONTEXT = 77


# --------------------------------------------------------------------------- random checkpoints


def _hf_shapes(width: int, layers: int, inner: int, projection: int | None) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield "text_model.embeddings.token_embedding.weight", (VOCAB, width)
    yield "text_model.embeddings.position_embedding.weight", (CONTEXT, width)
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield f"{p}self_attn.{proj}.weight", (width, width)
            yield f"{p}self_attn.{proj}.bias", (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            yield f"{p}{norm}.weight", (width,)
            yield f"{p}{norm}.bias", (width,)
        yield f"{p}mlp.fc1.weight", (inner, width)
        yield f"{p}mlp.fc1.bias", (inner,)
        yield f"{p}mlp.fc2.weight", (width, inner)
        yield f"{p}mlp.fc2.bias", (width,)
    yield "text_model.final_layer_norm.weight", (width,)
    yield "text_model.final_layer_norm.bias", (width,)
    if projection is not None:
        yield "text_projection.weight", (projection, width)


def _openclip_shapes(width: int, layers: int, inner: int, projection: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield "token_embedding.weight", (VOCAB, width)
    yield "positional_embedding", (CONTEXT, width)
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        for norm in ("ln_1", "ln_2"):
            yield f"{p}{norm}.weight", (width,)
            yield f"{p}{norm}.bias", (width,)
        yield f"{p}attn.in_proj_weight", (3 * width, width)
        yield f"{p}attn.in_proj_bias", (3 * width,)
        yield f"{p}attn.out_proj.weight", (width, width)
        yield f"{p}attn.out_proj.bias", (width,)
        yield f"{p}mlp.c_fc.weight", (inner, width)
        yield f"{p}mlp.c_fc.bias", (inner,)
        yield f"{p}mlp.c_proj.weight", (width, inner)
        yield f"{p}mlp.c_proj.bias", (width,)
    yield "ln_final.weight", (width,)
    yield "ln_final.bias", (width,)
    yield "text_projection", (width, projection)


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if "embedding" in name:
        if shape[0] == VOCAB and shape[1] >= 512:  # wide test models: one random row, shared (no memory)
            return torch.randn(1, shape[1], generator=generator).expand(shape)
        return 0.5 * torch.randn(shape, generator=generator)
    is_norm = any(part in name for part in ("ln_", "layer_norm"))
    if is_norm and name.endswith("weight"):
        return 1 + 0.2 * torch.randn(shape, generator=generator)
    if len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator) / shape[-1] ** 0.5


def _random_state_dict(
    shapes: Iterator[tuple[str, tuple[int, ...]]], prefix: str, seed: int
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {prefix + name: _random_tensor(name, shape, generator) for name, shape in shapes}


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


# --------------------------------------------------------------------------- references


def _reference_clip_l(canonical: dict[str, torch.Tensor], width: int, layers: int, inner: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        max_position_embeddings=CONTEXT,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=START_TOKEN,
        eos_token_id=END_TOKEN,
    )
    model = CLIPTextModel(config).eval()
    own = set(model.state_dict())
    mapped = {key if key in own else key.removeprefix("text_model."): value for key, value in canonical.items()}
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys
    assert all(key.endswith("position_ids") for key in result.missing_keys)
    return model


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, inner: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, inner)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(inner, width))])
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Resblocks(nn.Module):
    def __init__(self, width: int, heads: int, inner: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([_Block(width, heads, inner) for _ in range(layers)])


class OpenClipTextTower(nn.Module):
    """OpenCLIP's text tower: pre-LN blocks, causal mask, ln_final, pooled = ln_final(x)[argmax id] @ P."""

    def __init__(self, width: int, layers: int, inner: int, projection: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.zeros(CONTEXT, width))
        self.transformer = _Resblocks(width, width // 64, inner, layers)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, projection))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding
        states = [x]
        for block in self.transformer.resblocks:
            x = block(x, mask)
            states.append(x)
        final = self.ln_final(x)
        pooled = final[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection
        return states, final, pooled


def _reference_openclip(state_dict: dict[str, torch.Tensor], width: int, layers: int, inner: int, projection: int):
    tower = OpenClipTextTower(width, layers, inner, projection).eval()
    tower.load_state_dict(state_dict, strict=True)
    return tower


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error < rel, f"relative error {error:.3g}"


def _chunk(ids: list[int], pad: int) -> list[int]:
    return [START_TOKEN, *ids, END_TOKEN] + [pad] * (CONTEXT - 2 - len(ids))


# --------------------------------------------------------------------------- config


def test_config_from_the_sd15_checkpoint_listing() -> None:
    shapes = {}
    for line in SD15_CHECKPOINT_KEYS.read_text().splitlines():
        name, _dtype, shape = line.split("\t")
        if name.startswith("cond_stage_model."):
            shapes[name] = tuple(int(d) for d in shape.strip("[] ").split(",") if d.strip())
    config = clip_config_from_state_dict(shapes, "cond_stage_model.transformer.")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (3072, 49408, 77)
    assert config.hidden_act == "quick_gelu"
    assert detect_text_encoder_family(shapes) == "sd1"


@pytest.mark.parametrize(
    ("width", "layers", "inner", "projection", "heads"),
    [(1024, 24, 4096, 1024, 16), (1280, 32, 5120, 1280, 20)],  # ViT-H (SD2), bigG (SDXL)
)
def test_config_of_openclip_towers(width: int, layers: int, inner: int, projection: int, heads: int) -> None:
    shapes = {
        f"cond_stage_model.model.{name}": shape for name, shape in _openclip_shapes(width, layers, inner, projection)
    }
    config = clip_config_from_state_dict(shapes, "cond_stage_model.model.")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, layers, heads)
    assert (config.intermediate_size, config.projection_dim, config.hidden_act) == (inner, projection, "gelu")


# --------------------------------------------------------------------------- SD1 (HF layout)

SD1_PREFIX = "cond_stage_model.transformer."


@pytest.fixture(scope="module")
def sd1_checkpoint() -> dict[str, torch.Tensor]:
    return _random_state_dict(_hf_shapes(128, 3, 256, None), SD1_PREFIX, seed=1)


@pytest.fixture(scope="module")
def sd1_reference(sd1_checkpoint: dict[str, torch.Tensor]) -> CLIPTextModel:
    return _reference_clip_l(_strip(sd1_checkpoint, SD1_PREFIX), 128, 3, 256)


def _sd1_ids() -> torch.Tensor:
    return torch.tensor([_chunk([320, 1125, 539, 320, 2368], END_TOKEN)])


def test_sd1_from_a_safetensors_file(tmp_path: Path, sd1_checkpoint, sd1_reference) -> None:
    path = tmp_path / "tiny_sd1.safetensors"
    on_disk = dict(sd1_checkpoint)
    on_disk[f"{SD1_PREFIX}text_model.embeddings.position_ids"] = torch.arange(77.0)[None] + 1e-3  # imprecise floats
    on_disk["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    save_file(on_disk, str(path))

    encoder = load_text_encoder(load_file(str(path)))
    assert encoder.family == "sd1" and list(encoder.towers) == ["clip_l"]
    cond, pooled = encoder.encode_text("a photo of a cat")

    with torch.no_grad():
        expected = sd1_reference(_sd1_ids(), output_hidden_states=True)
    torch.testing.assert_close(cond, expected.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-6, rtol=0)

    skipped, _ = encoder.encode_text("a photo of a cat", layer_idx=-2)
    with torch.no_grad():
        penultimate = sd1_reference.final_layer_norm(expected.hidden_states[-2])
    torch.testing.assert_close(skipped, penultimate, atol=1e-6, rtol=0)
    assert not torch.allclose(skipped, cond)


def test_sd1_without_text_model_in_keys(sd1_checkpoint, sd1_reference) -> None:
    flat = {key.replace("transformer.text_model.", "transformer."): value for key, value in sd1_checkpoint.items()}
    assert not any("text_model" in key for key in flat)
    cond, _ = load_text_encoder(flat).encode_text("a photo of a cat")
    with torch.no_grad():
        expected = sd1_reference(_sd1_ids()).last_hidden_state
    torch.testing.assert_close(cond, expected, atol=1e-6, rtol=0)


def test_loading_adopts_checkpoint_tensors(sd1_checkpoint) -> None:
    tower = load_text_encoder(sd1_checkpoint).towers["clip_l"]
    embedding = tower.text_model.embeddings.token_embedding.weight
    assert (
        embedding.data_ptr() == sd1_checkpoint[f"{SD1_PREFIX}text_model.embeddings.token_embedding.weight"].data_ptr()
    )
    assert not any(p.is_meta for p in tower.parameters()) and not any(b.is_meta for b in tower.buffers())
    assert tower.text_model.embeddings.position_ids.tolist() == [list(range(77))]


def test_missing_weights_are_reported(sd1_checkpoint) -> None:
    broken = {k: v for k, v in sd1_checkpoint.items() if "layers.1.mlp.fc2.weight" not in k}
    with pytest.raises(ValueError, match="missing 1 weights"):
        load_text_encoder(broken)


def test_unknown_checkpoint_is_reported() -> None:
    with pytest.raises(ValueError, match="no SD1/SD2/SDXL text encoder"):
        detect_text_encoder_family({"model.diffusion_model.out.2.bias": torch.zeros(4)})


def test_clip_skip_bounds(sd1_checkpoint) -> None:
    encoder = load_text_encoder(sd1_checkpoint)
    last, _ = encoder.encode_text("cat")
    beyond, _ = encoder.encode_text("cat", layer_idx=-24)  # more than 3 layers: the last layer, as ComfyUI
    assert torch.equal(last, beyond)
    minus_one, _ = encoder.encode_text("cat", layer_idx=-1)
    torch.testing.assert_close(minus_one, last, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="negative"):
        encoder.encode_text("cat", layer_idx=1)


# --------------------------------------------------------------------------- OpenCLIP (SD2, SDXL)

G_WIDTH, G_LAYERS, G_INNER, G_PROJ = 128, 3, 512, 96


@pytest.fixture(scope="module")
def openclip_weights() -> dict[str, torch.Tensor]:
    return _random_state_dict(_openclip_shapes(G_WIDTH, G_LAYERS, G_INNER, G_PROJ), "", seed=2)


@pytest.fixture(scope="module")
def openclip_reference(openclip_weights) -> OpenClipTextTower:
    return _reference_openclip(openclip_weights, G_WIDTH, G_LAYERS, G_INNER, G_PROJ)


def _openclip_ids() -> torch.Tensor:
    return torch.tensor([_chunk([320, 1125, 539, 320, 2368], 0)])


def test_sd2_openclip_conversion(openclip_weights, openclip_reference) -> None:
    checkpoint = {f"cond_stage_model.model.{k}": v for k, v in openclip_weights.items()}
    checkpoint["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    encoder = load_text_encoder(checkpoint)
    assert encoder.family == "sd2" and list(encoder.towers) == ["clip_h"]
    assert encoder.towers["clip_h"].tokenizer.pad_token == 0

    states, final, pooled_ref = openclip_reference(_openclip_ids())
    ln_final = openclip_reference.ln_final
    cond, pooled = encoder.encode_text("a photo of a cat")  # SD2 default: penultimate + final norm
    with torch.no_grad():
        _close(cond, ln_final(states[-2]))
    _close(pooled, pooled_ref)
    last, _ = encoder.encode_text("a photo of a cat", layer_idx=-1)
    _close(last, final)


def test_openclip_attention_is_split_without_copies(openclip_weights) -> None:
    canonical = convert_text_encoder_state_dict(openclip_weights, "")
    fused = openclip_weights["transformer.resblocks.0.attn.in_proj_weight"]
    q = canonical["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    v = canonical["text_model.encoder.layers.0.self_attn.v_proj.weight"]
    assert q.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert torch.equal(v, fused[2 * G_WIDTH :])
    torch.testing.assert_close(canonical["text_projection.weight"], openclip_weights["text_projection"].t())


L_WIDTH, L_LAYERS, L_INNER = 64, 2, 128


@pytest.fixture(scope="module")
def sdxl_checkpoint(openclip_weights) -> dict[str, torch.Tensor]:
    checkpoint = _random_state_dict(
        _hf_shapes(L_WIDTH, L_LAYERS, L_INNER, None), "conditioner.embedders.0.transformer.", 3
    )
    checkpoint.update({f"conditioner.embedders.1.model.{k}": v for k, v in openclip_weights.items()})
    return checkpoint


def test_sdxl_dual_encoder(sdxl_checkpoint, openclip_reference) -> None:
    encoder = load_text_encoder(sdxl_checkpoint)
    assert encoder.family == "sdxl" and list(encoder.towers) == ["clip_l", "clip_g"]
    assert (encoder.cond_dim, encoder.pooled_dim) == (L_WIDTH + G_WIDTH, G_PROJ)
    clip_l = _reference_clip_l(
        _strip(sdxl_checkpoint, "conditioner.embedders.0.transformer."), L_WIDTH, L_LAYERS, L_INNER
    )

    tokens = encoder.tokenize("a photo of a cat")
    assert tokens["clip_l"].ids[0][7] == END_TOKEN and tokens["clip_g"].ids[0][7] == 0
    cond, pooled = encoder.encode(tokens)
    assert cond.shape == (1, 77, L_WIDTH + G_WIDTH) and pooled.shape == (1, G_PROJ)

    with torch.no_grad():
        l_states = clip_l(_sd1_ids(), output_hidden_states=True).hidden_states
    g_states, g_final, g_pooled = openclip_reference(_openclip_ids())
    # SDXL: penultimate layer of both, without the final layer norm; pooled from clip_g.
    _close(cond[..., :L_WIDTH], l_states[-2])
    _close(cond[..., L_WIDTH:], g_states[-2])
    _close(pooled, g_pooled)

    last, _ = encoder.encode(tokens, layer_idx=-1)
    _close(last[..., L_WIDTH:], g_states[-1])
    beyond, _ = encoder.encode(tokens, layer_idx=-40)
    _close(beyond[..., L_WIDTH:], g_final)


def test_sdxl_refiner(openclip_weights, openclip_reference) -> None:
    checkpoint = {f"conditioner.embedders.0.model.{k}": v for k, v in openclip_weights.items()}
    encoder = load_text_encoder(checkpoint)
    assert encoder.family == "sdxl_refiner" and list(encoder.towers) == ["clip_g"]
    cond, pooled = encoder.encode_text("a photo of a cat")
    g_states, _, g_pooled = openclip_reference(_openclip_ids())
    _close(cond, g_states[-2])
    _close(pooled, g_pooled)


def test_sdxl_real_widths() -> None:
    checkpoint = _random_state_dict(_hf_shapes(768, 1, 64, None), "conditioner.embedders.0.transformer.", 4)
    checkpoint.update(_random_state_dict(_openclip_shapes(1280, 1, 64, 1280), "conditioner.embedders.1.model.", 5))
    encoder = load_text_encoder(checkpoint)
    cond, pooled = encoder.encode_text("a photo of a cat")
    assert cond.shape == (1, 77, 2048) and pooled.shape == (1, 1280)
    assert cond.dtype == torch.float32 and torch.isfinite(cond).all()
    long_cond, long_pooled = encoder.encode_text(" ".join(["cat"] * 100))
    assert long_cond.shape == (1, 154, 2048) and long_pooled.shape == (1, 1280)


# --------------------------------------------------------------------------- weighting and embeddings


@pytest.fixture(scope="module")
def sd1_tower(sd1_checkpoint) -> ClipTower:
    return load_clip_tower(sd1_checkpoint, SD1_PREFIX, SD1_CLIP_L)


def test_unit_weights_equal_unweighted(sd1_tower: ClipTower) -> None:
    ids = [_chunk([320, 1125, 539, 320, 2368], END_TOKEN)]
    plain, plain_pooled = sd1_tower.encode_tokens(ids)
    ones, ones_pooled = sd1_tower.encode_tokens(ids, [[1.0] * 77])
    assert torch.equal(plain, ones) and torch.equal(plain_pooled, ones_pooled)


def test_weight_formula(sd1_tower: ClipTower) -> None:
    ids = [_chunk([320, 1125, 539, 320, 2368], END_TOKEN)]
    weights = [[1.0] * 77]
    weights[0][5] = 1.5
    weights[0][2] = 0.5
    weighted, pooled = sd1_tower.encode_tokens(ids, weights)
    z, z_pooled = sd1_tower.encode_tokens(ids)
    z_empty, _ = sd1_tower.encode_tokens([sd1_tower.tokenizer.empty_chunk()])
    w = torch.tensor(weights).unsqueeze(-1)
    expected = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
    torch.testing.assert_close(weighted, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(weighted[0, 5], z[0, 5])
    torch.testing.assert_close(pooled, z_pooled, atol=1e-5, rtol=1e-5)  # pooled is never weighted


def test_weighted_prompt_end_to_end(sd1_tower: ClipTower) -> None:
    prompt = sd1_tower.tokenize("a photo of a (cat:1.5)")
    assert prompt.weights[0][5] == 1.5
    cond, _ = sd1_tower.encode(prompt)
    direct, _ = sd1_tower.encode_tokens(prompt.ids, prompt.weights)
    assert torch.equal(cond, direct)


def test_chunks_concatenate(sd1_tower: ClipTower) -> None:
    prompt = sd1_tower.tokenize(" ".join(["cat", "dog"] * 50))
    assert len(prompt.ids) == 2
    cond, pooled = sd1_tower.encode(prompt)
    first, first_pooled = sd1_tower.encode_tokens(prompt.ids[:1])
    second, _ = sd1_tower.encode_tokens(prompt.ids[1:])
    assert cond.shape == (1, 154, 128)
    torch.testing.assert_close(cond, torch.cat([first, second], dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, first_pooled, atol=1e-6, rtol=0)


def test_textual_inversion_vector_replaces_a_token(sd1_tower: ClipTower) -> None:
    cat_row = sd1_tower.text_model.embeddings.token_embedding.weight[2368].clone()

    def lookup(name: str, encoder: str) -> torch.Tensor | None:
        return cat_row[None] if (name, encoder) == ("kitty", "clip_l") else None

    with_embedding = tokenize_prompt("a photo of a embedding:kitty", sd1_tower.tokenizer, embedding_lookup=lookup)
    assert with_embedding.ids[0][5] != 2368
    cond, pooled = sd1_tower.encode(with_embedding)
    expected, expected_pooled = sd1_tower.encode(sd1_tower.tokenize("a photo of a cat"))
    torch.testing.assert_close(cond, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-6, rtol=0)


def test_embedding_of_the_wrong_width_is_ignored(sd1_tower: ClipTower, caplog) -> None:
    prompt = tokenize_prompt(
        "embedding:other cat", sd1_tower.tokenizer, embedding_lookup=lambda name, encoder: torch.ones(2, 1280)
    )
    with caplog.at_level(logging.WARNING, logger="engine.backend.text"):
        cond, _ = sd1_tower.encode(prompt)
    assert "1280" in caplog.text
    expected, _ = sd1_tower.encode(sd1_tower.tokenize("cat"))
    torch.testing.assert_close(cond, expected, atol=1e-6, rtol=0)


def test_build_on_meta_then_assign_in_half_precision(sd1_checkpoint) -> None:
    canonical = convert_text_encoder_state_dict(sd1_checkpoint, SD1_PREFIX)
    config = clip_config_from_state_dict(sd1_checkpoint, SD1_PREFIX)
    model = build_clip_model(config, canonical, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    cond, _ = ClipTower(model, SD1_CLIP_L).encode_tokens(_sd1_ids().tolist())
    assert cond.dtype == torch.float32 and torch.isfinite(cond).all()
