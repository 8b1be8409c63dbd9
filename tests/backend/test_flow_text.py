"""SD3 / Flux text encoding (engine/backend/flow_text.py) against hand computations from transformers' own models.

The towers are tiny transformers models with seeded weights (tests/backend/flow_text_files.py); Loom builds its
FlowTextEncoder from their weights under a checkpoint's ``text_encoders.*`` prefixes. Every expected tensor is
assembled here from the transformers models' outputs with ComfyUI's rules (SD3ClipModel / FluxClipModel): SD3's
CLIP-L at hidden layer -2 without the final norm and an unprojected pooled output, CLIP-G likewise but projected,
their features joined and zero-padded, the T5 output after them; zeros where a tower is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import T5Config, T5EncoderModel

from engine.backend.flow_text import (
    FLUX_CLIP_L,
    SD3_CLIP_G,
    SD3_CLIP_L,
    FlowTextEncoder,
    no_tokens,
)
from engine.backend.prompt_weights import TokenizedPrompt
from engine.backend.t5 import T5TextEncoder, build_t5_encoder, convert_t5_state_dict, t5_config_from_state_dict
from engine.backend.t5_tokenizer import T5Tokenizer
from engine.backend.text import ClipTower, TowerSpec, load_clip_tower
from engine.backend.tokenizer import END_TOKEN, START_TOKEN
from tests.backend.flow_text_files import (
    CLIP_G_PROJECTION,
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    PREFIXES,
    T5_WIDTH,
    Towers,
    reference_towers,
    tower_state,
    train_spiece,
)

TOLERANCE = 1e-5
PROMPT = "a red cat sits on a blue mat"


@pytest.fixture(scope="module")
def towers() -> Towers:
    return reference_towers()


@pytest.fixture(scope="module")
def spiece(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_spiece(tmp_path_factory.mktemp("spiece"))


def _clip(towers: Towers, kind: str, spec: TowerSpec) -> ClipTower:
    state = {PREFIXES[kind] + key: value for key, value in tower_state(towers, kind).items()}
    return load_clip_tower(state, PREFIXES[kind], spec)


def _t5(towers: Towers, spiece: Path) -> T5TextEncoder:
    prefix = PREFIXES["t5xxl"]
    state = {prefix + key: value for key, value in tower_state(towers, "t5xxl").items()}
    model = build_t5_encoder(t5_config_from_state_dict(state, prefix), convert_t5_state_dict(state, prefix))
    return T5TextEncoder(model, T5Tokenizer(spiece))


def sd3(towers: Towers, spiece: Path, kinds: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl")) -> FlowTextEncoder:
    return FlowTextEncoder(
        "sd3",
        clip_l=_clip(towers, "clip_l", SD3_CLIP_L) if "clip_l" in kinds else None,
        clip_g=_clip(towers, "clip_g", SD3_CLIP_G) if "clip_g" in kinds else None,
        t5xxl=_t5(towers, spiece) if "t5xxl" in kinds else None)


# --------------------------------------------------------------------------- references from transformers


@torch.no_grad()
def clip_reference(model: Any, ids: list[int], *, hidden: int | None,
                   projected: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(features at hidden layer ``hidden`` without the final norm, or the normed last layer for None;
    pooled output at the first end token, projected or not)."""
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    features = out.last_hidden_state if hidden is None else out.hidden_states[hidden]
    pooled = out.last_hidden_state[:, ids.index(END_TOKEN)]
    return features, model.text_projection(pooled) if projected else pooled


@torch.no_grad()
def t5_reference(towers: Towers, ids: list[int]) -> torch.Tensor:
    return towers.t5(input_ids=torch.tensor([ids])).last_hidden_state


def _ids(tokens: dict[str, TokenizedPrompt], key: str) -> list[int]:
    return tokens[key].ids[0]


# --------------------------------------------------------------------------- SD3


def test_sd3_conditioning_equals_the_hand_computation(towers: Towers, spiece: Path) -> None:
    encoder = sd3(towers, spiece)
    tokens = encoder.tokenize(PROMPT)
    l_ids, g_ids, t5_ids = _ids(tokens, "clip_l"), _ids(tokens, "clip_g"), _ids(tokens, "t5xxl")
    assert l_ids[-1] == END_TOKEN and g_ids[-1] == 0  # clip_l pads with the end token, clip_g with 0
    assert len(t5_ids) == 77 and t5_ids[-1] == 0 and 1 in t5_ids  # SD3's T5 minimum length, end token 1
    cond, pooled = encoder.encode(tokens)

    l_out, l_pooled = clip_reference(towers.clip_l, l_ids, hidden=-2, projected=False)
    g_out, g_pooled = clip_reference(towers.clip_g, g_ids, hidden=-2, projected=True)
    lg = F.pad(torch.cat([l_out, g_out], dim=-1), (0, T5_WIDTH - CLIP_L_WIDTH - CLIP_G_WIDTH))
    expected = torch.cat([lg, t5_reference(towers, t5_ids)], dim=1)
    assert cond.shape == (1, 77 + 77, T5_WIDTH) and cond.dtype == torch.float32
    torch.testing.assert_close(cond, expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert pooled.shape == (1, CLIP_L_WIDTH + CLIP_G_PROJECTION) == (1, encoder.pooled_dim)
    torch.testing.assert_close(pooled, torch.cat([l_pooled, g_pooled], dim=-1), atol=TOLERANCE, rtol=TOLERANCE)
    assert encoder.cond_dim == T5_WIDTH


def test_missing_clip_l_is_768_zeros_in_front_of_clip_g(towers: Towers, spiece: Path) -> None:
    """CLIP-G alone (CLIPLoader type sd3): [zeros(768), g, zeros] on 4096 features, pooled [zeros(768), g]."""
    encoder = sd3(towers, spiece, ("clip_g",))
    tokens = encoder.tokenize(PROMPT)
    assert set(tokens) == {"clip_g"}
    cond, pooled = encoder.encode(tokens)
    g_out, g_pooled = clip_reference(towers.clip_g, _ids(tokens, "clip_g"), hidden=-2, projected=True)
    assert cond.shape == (1, 77, 4096) and pooled.shape == (1, 768 + CLIP_G_PROJECTION)
    assert torch.count_nonzero(cond[..., :768]) == 0 and torch.count_nonzero(cond[..., 768 + CLIP_G_WIDTH:]) == 0
    torch.testing.assert_close(cond[..., 768:768 + CLIP_G_WIDTH], g_out, atol=TOLERANCE, rtol=TOLERANCE)
    assert torch.count_nonzero(pooled[:, :768]) == 0
    torch.testing.assert_close(pooled[:, 768:], g_pooled, atol=TOLERANCE, rtol=TOLERANCE)


def test_missing_clip_g_gives_1280_pooled_zeros(towers: Towers, spiece: Path) -> None:
    encoder = sd3(towers, spiece, ("clip_l", "t5xxl"))
    tokens = encoder.tokenize(PROMPT)
    cond, pooled = encoder.encode(tokens)
    l_out, l_pooled = clip_reference(towers.clip_l, _ids(tokens, "clip_l"), hidden=-2, projected=False)
    expected = torch.cat([F.pad(l_out, (0, T5_WIDTH - CLIP_L_WIDTH)), t5_reference(towers, _ids(tokens, "t5xxl"))],
                         dim=1)
    torch.testing.assert_close(cond, expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert pooled.shape == (1, CLIP_L_WIDTH + 1280) and torch.count_nonzero(pooled[:, CLIP_L_WIDTH:]) == 0
    torch.testing.assert_close(pooled[:, :CLIP_L_WIDTH], l_pooled, atol=TOLERANCE, rtol=TOLERANCE)


def test_t5_alone_gives_its_output_and_2048_pooled_zeros(towers: Towers, spiece: Path) -> None:
    encoder = sd3(towers, spiece, ("t5xxl",))
    tokens = encoder.tokenize(PROMPT)
    cond, pooled = encoder.encode(tokens)
    torch.testing.assert_close(cond, t5_reference(towers, _ids(tokens, "t5xxl")), atol=TOLERANCE, rtol=TOLERANCE)
    assert pooled.shape == (1, 2048) and torch.count_nonzero(pooled) == 0


def test_clip_without_t5_pads_to_4096(towers: Towers, spiece: Path) -> None:
    encoder = sd3(towers, spiece, ("clip_l", "clip_g"))
    cond, _ = encoder.encode(encoder.tokenize(PROMPT))
    assert cond.shape == (1, 77, 4096) and encoder.cond_dim == 4096
    assert torch.count_nonzero(cond[..., CLIP_L_WIDTH + CLIP_G_WIDTH:]) == 0


def test_towers_given_no_tokens_encode_comfyuis_empty_rows(towers: Towers, spiece: Path) -> None:
    """CLIPTextEncodeSD3 "none" with every text empty: no CLIP part (zero pooled), T5 reads its bare end token;
    without a T5, ComfyUI's zeros [1, 77, 4096]. A lone CLIP tower with no chunks encodes [start, end]."""
    encoder = sd3(towers, spiece)
    empty = {key: no_tokens() for key in encoder.towers}
    cond, pooled = encoder.encode(empty)
    torch.testing.assert_close(cond, t5_reference(towers, [1]), atol=TOLERANCE, rtol=TOLERANCE)
    assert pooled.shape == (1, encoder.pooled_dim) and torch.count_nonzero(pooled) == 0
    clip_only = sd3(towers, spiece, ("clip_l", "clip_g"))
    cond, pooled = clip_only.encode({"clip_l": no_tokens(), "clip_g": no_tokens()})
    assert cond.shape == (1, 77, 4096) and torch.count_nonzero(cond) == 0 and torch.count_nonzero(pooled) == 0
    tokens = clip_only.tokenize(PROMPT)
    cond, _ = clip_only.encode({"clip_l": no_tokens(), "clip_g": tokens["clip_g"]})
    l_bare, _ = clip_reference(towers.clip_l, [START_TOKEN, END_TOKEN], hidden=-2, projected=False)
    assert cond.shape[1] == 2  # cut to the shorter tower, as ComfyUI
    torch.testing.assert_close(cond[..., :CLIP_L_WIDTH], l_bare, atol=TOLERANCE, rtol=TOLERANCE)


def test_prompt_weights_follow_comfyuis_rule(towers: Towers, spiece: Path) -> None:
    """(red:1.5): the same token ids; T5 tokens of weight 1 keep their encoding, weighted ones become
    (z - z_empty) * w + z_empty with z_empty the encoding of [end, pad, ...]; the CLIP part changes too."""
    encoder = sd3(towers, spiece)
    plain_tokens, weighted_tokens = encoder.tokenize("a red cat"), encoder.tokenize("a (red:1.5) cat")
    assert _ids(plain_tokens, "t5xxl") == _ids(weighted_tokens, "t5xxl")
    plain, _ = encoder.encode(plain_tokens)
    weighted, _ = encoder.encode(weighted_tokens)
    weights = torch.tensor(weighted_tokens["t5xxl"].weights[0])
    assert (weights == 1.5).any()
    t5_ids = _ids(weighted_tokens, "t5xxl")
    z, z_empty = t5_reference(towers, t5_ids), t5_reference(towers, [1] + [0] * (len(t5_ids) - 1))
    w = weights[None, :, None]
    expected_t5 = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
    torch.testing.assert_close(weighted[:, 77:], expected_t5, atol=TOLERANCE, rtol=TOLERANCE)
    assert not torch.allclose(weighted[:, :77], plain[:, :77], atol=1e-3)
    assert not torch.allclose(weighted[:, 77:], plain[:, 77:], atol=1e-3)


def test_clip_skip_reaches_t5(towers: Towers, spiece: Path) -> None:
    """CLIPSetLastLayer -k on T5 alone: the output of its block n - k, through T5's final layer norm (-3 on this
    3-block T5: block 0's); beyond the depth, the last layer (ComfyUI's set_clip_options)."""
    encoder = sd3(towers, spiece, ("t5xxl",))
    tokens = encoder.tokenize(PROMPT)
    with torch.no_grad():
        out = towers.t5(input_ids=torch.tensor([_ids(tokens, "t5xxl")]), output_hidden_states=True)
        for layer_idx in (-2, -3):
            cond, _ = encoder.encode(tokens, layer_idx=layer_idx)
            expected = towers.t5.encoder.final_layer_norm(out.hidden_states[layer_idx])
            torch.testing.assert_close(cond, expected, atol=TOLERANCE, rtol=TOLERANCE)
    for layer_idx in (-1, -4):
        last, _ = encoder.encode(tokens, layer_idx=layer_idx)
        torch.testing.assert_close(last, out.last_hidden_state, atol=TOLERANCE, rtol=TOLERANCE)
    again, _ = encoder.encode(tokens)
    assert torch.equal(again, last)  # the encoder's blocks are all back


def test_attention_scale_reaches_clip_towers_only(towers: Towers, spiece: Path) -> None:
    encoder = sd3(towers, spiece)
    tokens = encoder.tokenize(PROMPT)
    plain, _ = encoder.encode(tokens)
    scaled, _ = encoder.encode(tokens, attention_scale=(1.5, 0.5, 2.0, 0.75))
    assert not torch.allclose(scaled[:, :77], plain[:, :77], atol=1e-3)
    assert torch.equal(scaled[:, 77:], plain[:, 77:])


def test_clip_features_wider_than_t5_are_an_error(towers: Towers, spiece: Path) -> None:
    narrow = T5EncoderModel(T5Config(vocab_size=64, d_model=128, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                                     dropout_rate=0.0)).eval()
    encoder = FlowTextEncoder("sd3", clip_l=_clip(towers, "clip_l", SD3_CLIP_L),
                              clip_g=_clip(towers, "clip_g", SD3_CLIP_G),
                              t5xxl=T5TextEncoder(narrow, T5Tokenizer(spiece)))
    with pytest.raises(ValueError, match=r"CLIP-L \+ CLIP-G features \(160 wide\).*T5 encoder's width \(128\)"):
        encoder.encode(encoder.tokenize(PROMPT))


# --------------------------------------------------------------------------- Flux


def test_flux_cond_is_t5_and_pooled_is_clip_ls_last_layer(towers: Towers, spiece: Path) -> None:
    encoder = FlowTextEncoder("flux", clip_l=_clip(towers, "clip_l", FLUX_CLIP_L), t5xxl=_t5(towers, spiece))
    tokens = encoder.tokenize(PROMPT)
    assert set(tokens) == {"clip_l", "t5xxl"} and len(_ids(tokens, "t5xxl")) == 256  # Flux's T5 minimum
    cond, pooled = encoder.encode(tokens)
    torch.testing.assert_close(cond, t5_reference(towers, _ids(tokens, "t5xxl")), atol=TOLERANCE, rtol=TOLERANCE)
    _, expected_pooled = clip_reference(towers.clip_l, _ids(tokens, "clip_l"), hidden=None, projected=False)
    assert pooled.shape == (1, CLIP_L_WIDTH) == (1, encoder.pooled_dim)  # not projected (the file has a projection)
    torch.testing.assert_close(pooled, expected_pooled, atol=TOLERANCE, rtol=TOLERANCE)
    skipped, skipped_pooled = encoder.encode(tokens, layer_idx=-2)
    assert not torch.allclose(skipped, cond, atol=1e-3)  # clip skip reaches T5 (ComfyUI's set_clip_options)
    torch.testing.assert_close(skipped_pooled, pooled)  # the pooled output is the last layer's whatever the skip


def test_wrong_tower_sets_are_refused(towers: Towers, spiece: Path) -> None:
    clip_l, t5 = _clip(towers, "clip_l", FLUX_CLIP_L), _t5(towers, spiece)
    with pytest.raises(ValueError, match="Flux's text encoders are CLIP-L and T5-XXL; got clip_l"):
        FlowTextEncoder("flux", clip_l=clip_l)
    with pytest.raises(ValueError, match="got clip_l, clip_g, t5xxl"):
        FlowTextEncoder("flux", clip_l=clip_l, clip_g=_clip(towers, "clip_g", SD3_CLIP_G), t5xxl=t5)
    with pytest.raises(ValueError, match="sd3 clip_l: tower spec"):
        FlowTextEncoder("sd3", clip_l=clip_l)  # Flux's (SD1's) read-out is not SD3's
    with pytest.raises(ValueError, match="at least one of"):
        FlowTextEncoder("sd3")
    with pytest.raises(ValueError, match="for sd3, flux; got family 'sdxl'"):
        FlowTextEncoder("sdxl", clip_l=clip_l)
