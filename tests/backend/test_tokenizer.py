"""CLIP BPE tokenizer: known ids, an independent reference (transformers' Rust-backed CLIPTokenizer
fed a vocabulary this test builds itself from the shipped merge list), chunking and padding."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from engine.backend.tokenizer import (
    DEFAULT_VOCAB_PATH,
    END_TOKEN,
    OPENCLIP_PAD_TOKEN,
    START_TOKEN,
    ClipTokenizer,
    chunk_groups,
)

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def _reference_vocab_files(directory: Path) -> tuple[Path, Path]:
    """vocab.json / merges.txt built the way OpenAI's CLIP orders its vocabulary.

    Printable bytes (33..126, 161..172, 174..255) come first in byte order and stand for themselves;
    the remaining bytes follow, renamed to chr(256 + n). Each symbol then appears again with `</w>`,
    then one entry per merge, then the two special tokens.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [byte for byte in range(256) if byte not in printable]
    symbols = [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]
    lines = gzip.decompress(DEFAULT_VOCAB_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + 49152 - 256 - 2]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    vocab_path, merges_path = _reference_vocab_files(tmp_path_factory.mktemp("clip_vocab"))
    return transformers.CLIPTokenizer(str(vocab_path), str(merges_path))


def test_shipped_vocabulary_is_the_recorded_file() -> None:
    assert hashlib.sha256(DEFAULT_VOCAB_PATH.read_bytes()).hexdigest() == VOCAB_SHA256
    provenance = (DEFAULT_VOCAB_PATH.parent / "PROVENANCE.md").read_text()
    assert VOCAB_SHA256 in provenance


def test_a_photo_of_a_cat(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    chunks = tokenizer.tokenize("a photo of a cat")
    assert len(chunks) == 1 and len(chunks[0]) == 77
    assert chunks[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert chunks[0][7:] == [49407] * 70


def test_vocabulary_layout(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.vocab_size == 49408
    assert tokenizer.token_to_id("!") == 0
    assert tokenizer.token_to_id("!</w>") == 256
    assert tokenizer.token_to_id("a</w>") == 320
    assert tokenizer.token_to_id(",</w>") == 267
    assert tokenizer.token_to_id("<|startoftext|>") == START_TOKEN
    assert tokenizer.token_to_id("<|endoftext|>") == END_TOKEN
    assert tokenizer.encode("Hello, World!") == tokenizer.encode("hello , world !")


def test_openclip_pads_with_zero(tokenizer: ClipTokenizer) -> None:
    openclip = tokenizer.with_pad_token(OPENCLIP_PAD_TOKEN)
    chunk = openclip.tokenize("a photo of a cat")[0]
    assert chunk[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert chunk[7:] == [0] * 70
    assert ClipTokenizer(pad_token=0).empty_chunk() == [49406, 49407] + [0] * 75
    assert tokenizer.empty_chunk() == [49406] + [49407] * 76


TRICKY = [
    "masterpiece, best quality, ultra-detailed, 8k wallpaper!!!",
    "1girl, 25 years old, 3.14159 and 1,000,000",
    "don't it's we're you've I'm we'll he'd",
    "DON'T SHOUT. Mixed CaSe",
    "  multiple   spaces\n\nnew lines\tand tabs  ",
    "café naïve résumé Ångström Σίσυφος",
    "emoji 🐱🔥👍🏽 and symbols © ® ™ ½ x²",
    "snake_case kebab-case dotted.name path/to/file #hashtag @user",
    "[square] {curly} <angle> \"quotes\" 'single'",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|endoftext|> inside",
]


@pytest.mark.parametrize("text", TRICKY)
def test_matches_reference_tokenizer(tokenizer: ClipTokenizer, reference, text: str) -> None:
    expected = reference(text)["input_ids"]
    assert expected[0] == START_TOKEN and expected[-1] == END_TOKEN
    assert tokenizer.encode(text) == expected[1:-1]


def test_cjk_ideographs_are_separate_words(tokenizer: ClipTokenizer, reference) -> None:
    # ComfyUI's tokenizer (transformers' BasicTokenizer path) puts spaces around CJK ideographs.
    assert tokenizer.encode("日本語の猫") == reference("日 本 語 の 猫")["input_ids"][1:-1]
    assert tokenizer.encode("日本語の猫") != reference("日本語の猫")["input_ids"][1:-1]


def test_control_and_format_characters_are_dropped(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.encode("c\u200bat\u00ad\x07") == tokenizer.encode("cat")
    assert tokenizer.encode("a\u00a0cat\u3000dog") == tokenizer.encode("a cat dog")
    assert tokenizer.encode("") == [] and tokenizer.encode(" \n\t ") == []


def test_unicode_is_nfc_normalised(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.encode("cafe\u0301") == tokenizer.encode("caf\u00e9")


def test_decode_round_trip(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer.encode("A Photo of a cat, déjà vu 🐱")
    assert tokenizer.decode([START_TOKEN, *ids, END_TOKEN]) == "a photo of a cat , déjà vu 🐱"


def test_long_prompt_makes_three_chunks(tokenizer: ClipTokenizer) -> None:
    words = ["cat", "dog", "tree", "house", "river"] * 40  # 200 words, one token each
    content = tokenizer.encode(" ".join(words))
    assert len(content) == 200
    for pad, tok in ((END_TOKEN, tokenizer), (0, tokenizer.with_pad_token(0))):
        chunks = tok.tokenize(" ".join(words))
        assert [len(chunk) for chunk in chunks] == [77, 77, 77]
        for chunk in chunks:
            assert chunk[0] == START_TOKEN
        assert chunks[0][76] == END_TOKEN and chunks[1][76] == END_TOKEN
        assert chunks[0][1:76] + chunks[1][1:76] + chunks[2][1:51] == content
        assert chunks[2][51] == END_TOKEN
        assert chunks[2][52:] == [pad] * 25


def test_exactly_75_tokens_fit_one_chunk(tokenizer: ClipTokenizer) -> None:
    chunks = tokenizer.tokenize(" ".join(["cat"] * 75))
    assert len(chunks) == 1 and chunks[0][76] == END_TOKEN
    assert len(tokenizer.tokenize(" ".join(["cat"] * 76))) == 2


def test_short_groups_move_whole_to_the_next_chunk() -> None:
    first = [(1, 1.0)] * 73
    small = [(2, 1.5)] * 5  # does not fit in the 2 slots left: moves whole
    chunks = chunk_groups([first, small], pad=0)
    assert len(chunks) == 2
    assert chunks[0][:74] == [(START_TOKEN, 1.0)] + first
    assert chunks[0][74:] == [(END_TOKEN, 1.0), (0, 1.0), (0, 1.0)]
    assert chunks[1][:7] == [(START_TOKEN, 1.0)] + small + [(END_TOKEN, 1.0)]


def test_long_groups_split_at_the_edge() -> None:
    first = [(1, 1.0)] * 73
    large = [(2, 1.0)] * 8
    chunks = chunk_groups([first, large], pad=0)
    assert [token for token, _ in chunks[0][74:]] == [2, 2, END_TOKEN]
    assert [token for token, _ in chunks[1][:8]] == [START_TOKEN] + [2] * 6 + [END_TOKEN]


def test_empty_prompt_is_one_chunk(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.tokenize("") == [tokenizer.empty_chunk()]
    assert chunk_groups([]) == [[(START_TOKEN, 1.0), (END_TOKEN, 1.0)] + [(END_TOKEN, 1.0)] * 75]


def test_vocabulary_loads_lazily(tmp_path: Path) -> None:
    missing = ClipTokenizer(tmp_path / "absent.txt.gz")  # nothing is read at construction
    with pytest.raises(FileNotFoundError):
        missing.encode("cat")
