"""T5 text encoder (engine/backend/t5.py) and T5 tokenizer (engine/backend/t5_tokenizer.py).

The reference is transformers' T5EncoderModel built directly from a hand-written tiny T5Config with
seeded random weights; its state dict is saved as a real .safetensors file in ComfyUI's T5 file layout
(the HF encoder keys, no prefix) and loaded back through Loom's code, which infers the config itself.
The tokenizer tests train a tiny sentencepiece model here (no download) and build a matching
``tokenizer.json`` with the tokenizers library.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from engine.backend.t5 import (
    T5TextEncoder,
    build_t5_encoder,
    convert_t5_state_dict,
    find_t5_prefix,
    load_t5_encoder,
    t5_config_from_state_dict,
)
from engine.backend.t5_tokenizer import (
    FLUX_T5_MIN_LENGTH,
    SD3_T5_MIN_LENGTH,
    T5_EOS_TOKEN,
    T5_PAD_TOKEN,
    T5Tokenizer,
    T5TokenizerNotFoundError,
    find_t5_tokenizer_file,
    tokenize_t5_prompt,
)

FP32_TOLERANCE = 1e-4
VOCAB = 200


def tiny_config(feed_forward_proj: str = "gated-gelu") -> T5Config:
    return T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
                    feed_forward_proj=feed_forward_proj, dropout_rate=0.0)


def reference_model(feed_forward_proj: str = "gated-gelu", seed: int = 0) -> T5EncoderModel:
    """A tiny T5 encoder with every weight (layer norms included) drawn from a seeded normal."""
    torch.manual_seed(seed)
    model = T5EncoderModel(tiny_config(feed_forward_proj)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if "layer_norm" not in name else 0.1
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.copy_(noise + (1.0 if "layer_norm" in name else 0.0))
        model.encoder.embed_tokens.weight.copy_(model.shared.weight)
    return model


def comfy_layout(
    model: T5EncoderModel, dtype: torch.dtype = torch.float32, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The encoder's weights as ComfyUI's t5xxl_*.safetensors stores them (no encoder.embed_tokens)."""
    return {f"{prefix}{key}": value.to(dtype).contiguous() for key, value in model.state_dict().items()
            if key != "encoder.embed_tokens.weight"}


def sample_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 19), generator=generator)
    ids[:, -4] = T5_EOS_TOKEN
    ids[:, -3:] = T5_PAD_TOKEN
    return ids


def reference_hidden(model: T5EncoderModel, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def save(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "t5xxl_tiny.safetensors") -> Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


# --------------------------------------------------------------------------- config and layout


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_config_inferred_from_shapes(feed_forward_proj: str) -> None:
    config = t5_config_from_state_dict(comfy_layout(reference_model(feed_forward_proj)))
    assert (config.vocab_size, config.d_model, config.d_ff, config.d_kv) == (VOCAB, 32, 64, 8)
    assert (config.num_layers, config.num_heads, config.relative_attention_num_buckets) == (2, 4, 32)
    assert config.feed_forward_proj == feed_forward_proj
    assert config.is_gated_act == (feed_forward_proj == "gated-gelu")


def test_t5xxl_shapes_give_the_xxl_config() -> None:
    shapes: dict[str, list[int]] = {"shared.weight": [32128, 4096]}
    for block in range(24):
        base = f"encoder.block.{block}.layer."
        shapes[base + "0.SelfAttention.q.weight"] = [4096, 4096]
        shapes[base + "1.DenseReluDense.wi_0.weight"] = [10240, 4096]
    shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = [32, 64]
    config = t5_config_from_state_dict(shapes)
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (4096, 10240, 24, 64, 64)
    assert config.vocab_size == 32128 and config.dense_act_fn == "gelu_new" and config.is_gated_act


def test_prefix_detection_and_errors() -> None:
    tensors = comfy_layout(reference_model())
    assert find_t5_prefix(tensors) == ""
    assert find_t5_prefix({f"text_encoders.t5xxl.transformer.{k}": v for k, v in tensors.items()}) == (
        "text_encoders.t5xxl.transformer.")
    with pytest.raises(ValueError, match="no T5 text encoder"):
        find_t5_prefix({"model.diffusion_model.x": torch.zeros(1)})
    umt5 = dict(tensors)
    umt5["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    with pytest.raises(ValueError, match="UMT5"):
        t5_config_from_state_dict(umt5)
    with pytest.raises(ValueError, match="scaled fp8"):
        convert_t5_state_dict({**tensors, "scaled_fp8": torch.zeros(0)})


def test_missing_weights_are_an_error() -> None:
    tensors = comfy_layout(reference_model())
    config = t5_config_from_state_dict(tensors)
    del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    with pytest.raises(ValueError, match="missing 1 weights"):
        build_t5_encoder(config, convert_t5_state_dict(tensors))


# --------------------------------------------------------------------------- numerics against transformers


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_fp32_file_matches_transformers(tmp_path: Path, feed_forward_proj: str) -> None:
    reference = reference_model(feed_forward_proj)
    encoder = load_t5_encoder(save(tmp_path, comfy_layout(reference)))
    ids = sample_ids()
    ours = encoder.encode(ids)
    expected = reference_hidden(reference, ids)
    assert ours.shape == (2, 19, 32) and ours.dtype == torch.float32
    diff = (ours - expected).abs().max().item()
    logging.getLogger(__name__).info("T5 fp32 %s max |diff| %.3g", feed_forward_proj, diff)
    assert diff < FP32_TOLERANCE


def test_attention_mask_is_passed_through(tmp_path: Path) -> None:
    reference = reference_model()
    encoder = load_t5_encoder(save(tmp_path, comfy_layout(reference)))
    ids = sample_ids()
    mask = (ids != T5_PAD_TOKEN).long()
    masked = encoder.encode(ids, mask)
    assert (masked - reference_hidden(reference, ids, mask)).abs().max().item() < FP32_TOLERANCE
    assert (masked - encoder.encode(ids)).abs().max().item() > 1e-3  # the mask changes the result


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_compute_in_fp32(tmp_path: Path, dtype: torch.dtype) -> None:
    """A file stored in fp16 / bf16 equals the reference with the same rounded weights, computed in fp32."""
    reference = reference_model()
    stored = comfy_layout(reference, dtype)
    encoder = load_t5_encoder(save(tmp_path, stored, f"t5xxl_{dtype}.safetensors".replace("torch.", "")))
    assert encoder.dtype == torch.float32
    rounded = reference_model()
    rounded.load_state_dict({k: v.float() for k, v in stored.items()}, strict=False)
    rounded.encoder.embed_tokens.weight.data.copy_(rounded.shared.weight)
    ids = sample_ids()
    assert (encoder.encode(ids) - reference_hidden(rounded, ids)).abs().max().item() < FP32_TOLERANCE


def test_checkpoint_prefix_loads(tmp_path: Path) -> None:
    reference = reference_model()
    tensors = comfy_layout(reference, prefix="text_encoders.t5xxl.transformer.")
    tensors["model.diffusion_model.other.weight"] = torch.zeros(2)
    encoder = load_t5_encoder(save(tmp_path, tensors))
    ids = sample_ids()
    assert (encoder.encode(ids) - reference_hidden(reference, ids)).abs().max().item() < FP32_TOLERANCE


# --------------------------------------------------------------------------- tokenizer


CORPUS = [
    "a photo of a cat sitting on a red chair",
    "a painting of a dog in the snow, highly detailed",
    "an astronaut riding a horse on the moon",
    "the quick brown fox jumps over the lazy dog",
    "portrait of a woman with blue eyes and long hair",
    "a castle on a hill at sunset, cinematic lighting",
]


@pytest.fixture(scope="module")
def spiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unigram sentencepiece model with T5's special ids: <pad> 0, </s> 1, <unk> 2, no <s>."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    prefix = folder / "spiece"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(prefix), vocab_size=60, model_type="unigram",
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, minloglevel=2,
    )
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def tokenizer_json(spiece_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same vocabulary as a tokenizers-library Unigram tokenizer.json (as T5's tokenizer.json is)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    spm = pytest.importorskip("sentencepiece")
    processor = spm.SentencePieceProcessor(model_file=str(spiece_model))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    path = tmp_path_factory.mktemp("json") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def word_ids(processor: object, text: str) -> list[int]:
    ids: list[int] = []
    for word in text.split():
        ids.extend(processor.encode(word))  # type: ignore[attr-defined]
    return ids


@pytest.mark.parametrize("kind", ["spiece", "json"])
def test_prompt_ids_end_and_padding(kind: str, spiece_model: Path, tokenizer_json: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    tokenizer = T5Tokenizer(spiece_model if kind == "spiece" else tokenizer_json)
    processor = spm.SentencePieceProcessor(model_file=str(spiece_model))
    expected = word_ids(processor, "a photo of a cat")
    assert 2 not in expected  # no <unk>: the words are in the vocabulary
    tokens = tokenize_t5_prompt("a photo of a cat", tokenizer)
    assert tokens.ids == expected + [T5_EOS_TOKEN] + [T5_PAD_TOKEN] * (SD3_T5_MIN_LENGTH - len(expected) - 1)
    assert tokens.weights == [1.0] * SD3_T5_MIN_LENGTH and not tokens.has_weights
    flux = tokenize_t5_prompt("a photo of a cat", tokenizer, min_length=FLUX_T5_MIN_LENGTH)
    assert len(flux.ids) == FLUX_T5_MIN_LENGTH and flux.ids[: len(expected) + 1] == expected + [T5_EOS_TOKEN]


def test_weights_are_carried(spiece_model: Path) -> None:
    tokenizer = T5Tokenizer(spiece_model)
    cat, dog = tokenizer.encode("cat"), tokenizer.encode("red dog")
    tokens = tokenize_t5_prompt("(cat:1.5), ((red dog))", tokenizer)
    comma = tokenizer.encode(",")
    n = len(cat) + len(comma) + len(dog)
    assert tokens.ids[:n] == cat + comma + dog and tokens.ids[n] == T5_EOS_TOKEN
    assert tokens.weights[: len(cat)] == [1.5] * len(cat)
    assert tokens.weights[len(cat) : len(cat) + len(comma)] == [1.0] * len(comma)
    assert tokens.weights[len(cat) + len(comma) : n] == pytest.approx([1.21] * len(dog))
    assert tokens.weights[n:] == [1.0] * (SD3_T5_MIN_LENGTH - n)


def test_long_prompt_is_one_sequence_without_chunks(spiece_model: Path) -> None:
    tokenizer = T5Tokenizer(spiece_model)
    prompt = " ".join(CORPUS * 3)
    tokens = tokenize_t5_prompt(prompt, tokenizer)
    content = tokenizer.encode(prompt)
    assert len(content) > SD3_T5_MIN_LENGTH
    assert tokens.ids == content + [T5_EOS_TOKEN]


def test_embedding_rows_take_slots(spiece_model: Path) -> None:
    tokenizer = T5Tokenizer(spiece_model)
    vectors = torch.randn(2, 32)

    def lookup(name: str, key: str) -> torch.Tensor | None:
        return vectors if (name, key) == ("thing", "t5xxl") else None

    tokens = tokenize_t5_prompt("a embedding:thing cat", tokenizer, embedding_lookup=lookup)
    a = tokenizer.encode("a")
    assert set(tokens.embeddings) == {len(a), len(a) + 1}
    assert torch.equal(tokens.embeddings[len(a) + 1], vectors[1])


def test_tokenizer_lookup_rule(tmp_path: Path, spiece_model: Path, tokenizer_json: Path) -> None:
    encoder = tmp_path / "t5xxl_fp16.safetensors"
    with pytest.raises(T5TokenizerNotFoundError) as caught:
        T5Tokenizer.for_encoder(encoder)
    message = str(caught.value)
    assert "tokenizer.json" in message and "spiece.model" in message and "never downloads" in message
    assert str(tmp_path / "t5xxl_fp16") in message and str(tmp_path / "t5_tokenizer") in message

    (tmp_path / "spiece.model").write_bytes(spiece_model.read_bytes())
    assert find_t5_tokenizer_file(encoder) == tmp_path / "spiece.model"
    (tmp_path / "t5_tokenizer").mkdir()
    (tmp_path / "t5_tokenizer" / "spiece.model").write_bytes(spiece_model.read_bytes())
    assert find_t5_tokenizer_file(encoder) == tmp_path / "t5_tokenizer" / "spiece.model"
    (tmp_path / "t5_tokenizer" / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    assert find_t5_tokenizer_file(encoder) == tmp_path / "t5_tokenizer" / "tokenizer.json"
    (tmp_path / "t5xxl_fp16").mkdir()
    (tmp_path / "t5xxl_fp16" / "spiece.model").write_bytes(spiece_model.read_bytes())
    assert find_t5_tokenizer_file(encoder) == tmp_path / "t5xxl_fp16" / "spiece.model"
    assert T5Tokenizer.for_encoder(encoder).encode("cat") == T5Tokenizer(spiece_model).encode("cat")


# --------------------------------------------------------------------------- weighted encoding


def test_weighted_prompt_encoding(tmp_path: Path, spiece_model: Path) -> None:
    """Weights give (z - z_empty) * w + z_empty against the empty prompt [EOS, PAD, ...] (ComfyUI)."""
    reference = reference_model()
    tokenizer = T5Tokenizer(spiece_model)
    encoder = load_t5_encoder(save(tmp_path, comfy_layout(reference)), tokenizer=tokenizer)
    assert isinstance(encoder, T5TextEncoder)
    tokens = tokenize_t5_prompt("a (cat:1.5) on a chair", tokenizer)
    ids = torch.tensor([tokens.ids])
    empty = torch.tensor([[T5_EOS_TOKEN] + [T5_PAD_TOKEN] * (len(tokens.ids) - 1)])
    z, z_empty = reference_hidden(reference, ids), reference_hidden(reference, empty)
    w = torch.tensor(tokens.weights)[None, :, None]
    expected = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
    ours = encoder.encode_tokens(tokens)
    assert ours.shape == (1, SD3_T5_MIN_LENGTH, 32)
    assert (ours - expected).abs().max().item() < FP32_TOLERANCE
    plain = encoder.encode_tokens(tokenize_t5_prompt("a cat on a chair", tokenizer))
    assert (plain - reference_hidden(reference, torch.tensor([tokenize_t5_prompt("a cat on a chair",
                                                                                  tokenizer).ids]))).abs().max() < 1e-4


def test_embedding_vectors_replace_token_embeddings(tmp_path: Path, spiece_model: Path) -> None:
    reference = reference_model()
    tokenizer = T5Tokenizer(spiece_model)
    encoder = load_t5_encoder(save(tmp_path, comfy_layout(reference)))
    word = next(w for w in ("cat", "dog", "the", "of", "a") if len(tokenizer.encode(w)) == 1)
    row = reference.shared.weight[tokenizer.encode(word)[0]].detach()
    tokens = tokenize_t5_prompt("a embedding:kitty", tokenizer, embedding_lookup=lambda name, key: row)
    same = tokenize_t5_prompt(f"a {word}", tokenizer)
    assert tokens.ids != same.ids and set(tokens.embeddings) == {len(tokenizer.encode("a"))}
    assert (encoder.encode_tokens(tokens) - encoder.encode_tokens(same)).abs().max().item() < FP32_TOLERANCE
