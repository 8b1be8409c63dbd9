"""Prompt weighting parser (ComfyUI semantics) and weighted tokenization with embeddings."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.backend.prompt_weights import (
    EMBEDDING_SLOT_ID,
    EmbeddingSegment,
    TextSegment,
    parse_prompt,
    parse_weights,
    tokenize_prompt,
)
from engine.backend.tokenizer import END_TOKEN, START_TOKEN, ClipTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat) b", [("a ", 1.0), ("cat", 1.1), (" b", 1.0)]),
        ("((cat))", [("cat", 1.1 * 1.1)]),
        ("(((cat)))", [("cat", 1.1 * 1.1 * 1.1)]),
        ("(cat:1.5)", [("cat", 1.5)]),
        ("(cat: 0.5 )", [("cat", 0.5)]),
        ("(cat:-1)", [("cat", -1.0)]),
        ("((cat:1.5))", [("cat", 1.5)]),  # an explicit weight replaces the inherited one
        ("(a (b:0.5) c:1.2)", [("a ", 1.2), ("b", 0.5), (" c", 1.2)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.1 * 1.1), (" c", 1.1)]),
        ("(a (b:0.5))", [("a ", 1.1), ("b", 0.5)]),  # the last colon is inside the inner group
        ("(a:b)", [("a:b", 1.1)]),
        ("(:1.2)", [(":1.2", 1.1)]),
        ("(1girl:1.2), solo", [("1girl", 1.2), (", solo", 1.0)]),
        ("[cat]", [("[cat]", 1.0)]),  # no square-bracket weighting in ComfyUI
        ("[(cat)]", [("[", 1.0), ("cat", 1.1), ("]", 1.0)]),
        ("()", []),
    ],
)
def test_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"a \(b\) (c)", [("a (b) ", 1.0), ("c", 1.1)]),
        (r"(smile \(happy\):1.3)", [("smile (happy)", 1.3)]),
        (r"(a:1.2\))", [("a:1.2)", 1.1)]),  # an escaped paren spoils the number
        ("back\\slash", [("back\\slash", 1.0)]),
        ("\\\\(a)", [("\\(a)", 1.0)]),  # the second backslash escapes; ")" is then stray
    ],
)
def test_escapes(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(cat", [("(cat", 1.0)]),
        ("a (b (c)", [("a ", 1.0), ("b ", 1.1), ("(c", 1.1)]),
        ("cat) (dog)", [("cat) (dog)", 1.0)]),
        ("x)((b))", [("x)(", 1.0), ("b", 1.1), (")", 1.0)]),
    ],
)
def test_unbalanced_parentheses(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(prompt) == expected


def test_embedding_segments() -> None:
    assert parse_prompt("a photo, embedding:style_v2, of a cat") == [
        TextSegment("a photo,", 1.0),
        EmbeddingSegment("style_v2,", 1.0, leftover="of a cat"),
    ]
    assert parse_prompt("embedding:foo\nembedding:bar  baz") == [
        EmbeddingSegment("foo", 1.0),
        EmbeddingSegment("bar", 1.0, leftover="baz"),
    ]
    assert parse_prompt("(embedding:foo:1.2) x") == [EmbeddingSegment("foo", 1.2), TextSegment(" x", 1.0)]
    assert parse_prompt("xembedding:foo") == [TextSegment("xembedding:foo", 1.0)]
    assert parse_prompt("a embedding:") == [TextSegment("a", 1.0), TextSegment("embedding:", 1.0)]


def test_weighted_tokens(tokenizer: ClipTokenizer) -> None:
    prompt = tokenize_prompt("a photo of a (cat:1.3), ((dog))", tokenizer)
    cat, dog, comma = tokenizer.encode("cat")[0], tokenizer.encode("dog")[0], tokenizer.encode(",")[0]
    assert prompt.ids[0][:9] == [START_TOKEN, 320, 1125, 539, 320, cat, comma, dog, END_TOKEN]
    assert prompt.weights[0][:9] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0, pytest.approx(1.21), 1.0]
    assert prompt.weights[0][9:] == [1.0] * 68
    assert prompt.has_weights and not tokenize_prompt("a cat", tokenizer).has_weights
    assert prompt.embeddings == {}


def test_brackets_and_escapes_reach_the_tokenizer(tokenizer: ClipTokenizer) -> None:
    assert tokenize_prompt("[cat]", tokenizer).ids[0][1:4] == tokenizer.encode("[cat]")
    assert tokenize_prompt(r"\(cat\)", tokenizer).ids[0][1:4] == tokenizer.encode("(cat)")


def test_embeddings_fill_slots(tokenizer: ClipTokenizer) -> None:
    vectors = torch.arange(6.0).reshape(3, 2)
    calls: list[tuple[str, str]] = []

    def lookup(name: str, encoder: str) -> torch.Tensor | None:
        calls.append((name, encoder))
        return vectors if name == "style" else None

    prompt = tokenize_prompt("a (embedding:style:1.2) cat", tokenizer, embedding_lookup=lookup, encoder_key="clip_g")
    assert calls == [("style", "clip_g")]
    assert prompt.ids[0][:7] == [
        START_TOKEN,
        320,
        EMBEDDING_SLOT_ID,
        EMBEDDING_SLOT_ID,
        EMBEDDING_SLOT_ID,
        tokenizer.encode("cat")[0],
        END_TOKEN,
    ]
    assert prompt.weights[0][2:5] == [1.2, 1.2, 1.2]
    assert sorted(prompt.embeddings) == [(0, 2), (0, 3), (0, 4)]
    for row, position in enumerate((2, 3, 4)):
        assert torch.equal(prompt.embeddings[(0, position)], vectors[row])


def test_embedding_name_with_trailing_comma(tokenizer: ClipTokenizer) -> None:
    found = torch.ones(768)

    def lookup(name: str, encoder: str) -> torch.Tensor | None:
        return found if name == "style" else None

    prompt = tokenize_prompt("embedding:style, cat", tokenizer, embedding_lookup=lookup)
    comma, cat = tokenizer.encode(", cat")
    assert prompt.ids[0][:5] == [START_TOKEN, EMBEDDING_SLOT_ID, comma, cat, END_TOKEN]


def test_unknown_embedding_is_dropped_with_a_warning(tokenizer: ClipTokenizer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.backend.prompt_weights"):
        prompt = tokenize_prompt("embedding:nothing cat", tokenizer, embedding_lookup=lambda name, encoder: None)
    assert prompt.ids[0][:3] == [START_TOKEN, tokenizer.encode("cat")[0], END_TOKEN]
    assert "nothing" in caplog.text
    assert tokenize_prompt("embedding:nothing cat", tokenizer).ids == prompt.ids


def test_weighted_long_prompt_keeps_short_segments_whole(tokenizer: ClipTokenizer) -> None:
    head = " ".join(["cat"] * 73)
    prompt = tokenize_prompt(f"{head} (a red dog:1.4)", tokenizer)  # 3 weighted tokens, 2 slots left
    assert len(prompt.ids) == 2
    assert prompt.ids[0][74:] == [END_TOKEN, END_TOKEN, END_TOKEN]
    assert prompt.ids[1][1:5] == [*tokenizer.encode("a red dog"), END_TOKEN]
    assert prompt.weights[1][1:4] == [1.4] * 3
    assert prompt.weights[1][0] == 1.0 and prompt.weights[1][4] == 1.0
