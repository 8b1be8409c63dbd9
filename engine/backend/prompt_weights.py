"""Prompt weighting and textual-inversion tokens, with ComfyUI's semantics.

Syntax (what ComfyUI's CLIPTextEncode understands, so its workflows mean the same here):

- `(text)` multiplies the weight of `text` by 1.1; nesting multiplies: `((text))` is 1.1 * 1.1.
- `(text:1.3)` sets the weight to 1.3. The number *replaces* the weight inherited from enclosing
  parentheses (`((text:1.3))` is 1.3, not 1.43), as in ComfyUI; A1111 multiplies instead.
  The number is what follows the last `:` of the group and must parse as a Python float
  (`(a:b)` is `a:b` at 1.1). A `:` at the very start of a group is never a weight.
- `[text]` is *not* weighting: ComfyUI has no square-bracket syntax (A1111's `[text]` = /1.1 is not
  implemented there), so brackets are ordinary characters and reach the tokenizer.
- `\\(` and `\\)` are literal parentheses. Any other backslash is an ordinary character.
- Unbalanced parentheses behave as in ComfyUI: an unclosed `(` keeps the rest of its piece as text;
  after a stray `)` at the top level, nothing else in the prompt is weighted.
- `embedding:NAME` at the start of a weighted piece or after a space or newline names a textual
  inversion embedding; NAME is the next whitespace-delimited word, the text after it continues as
  ordinary prompt text. If NAME is not found, ComfyUI retries with commas stripped from its ends
  (so `embedding:foo,` works); a name that still is not found is dropped with a warning.
  `embedding:` followed by no name is kept as text.

Tokenization (`tokenize_prompt`) turns each weighted piece into one group of tokens for
`tokenizer.chunk_groups`; an embedding contributes one group of its rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.backend.tokenizer import ClipTokenizer, chunk_groups

logger = logging.getLogger(__name__)

EMPHASIS = 1.1
EMBEDDING_PREFIX = "embedding:"
# Token id stored at the slots that an embedding vector replaces (the vector, not the id, is encoded).
EMBEDDING_SLOT_ID = 0

EmbeddingLookup = Callable[[str, str], torch.Tensor | None]
"""(name, encoder key "clip_l" | "clip_h" | "clip_g") -> [n, dim] (or [dim]) vectors, or None."""

# Escaped parentheses travel through the parser as two Unicode noncharacters. The tokenizer drops
# noncharacters anyway, so removing any that the prompt itself contains changes nothing.
_ESCAPED_OPEN = "\ufdd0"
_ESCAPED_CLOSE = "\ufdd1"
_EMBEDDING_SPLIT = re.compile(f"[ \n]{re.escape(EMBEDDING_PREFIX)}")


@dataclass(frozen=True)
class TextSegment:
    text: str
    weight: float


@dataclass(frozen=True)
class EmbeddingSegment:
    """A textual-inversion token. `leftover` is the text that followed the name in its piece."""

    name: str
    weight: float
    leftover: str = ""


Segment = TextSegment | EmbeddingSegment


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as chunks of 77 token ids with one weight per token.

    `embeddings` maps (chunk index, position) to the [dim] vector that replaces the token embedding
    at that slot; such slots hold `EMBEDDING_SLOT_ID` in `ids`.
    """

    ids: list[list[int]]
    weights: list[list[float]]
    embeddings: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return any(weight != 1.0 for chunk in self.weights for weight in chunk)


def _escape(text: str) -> str:
    text = text.replace(_ESCAPED_OPEN, "").replace(_ESCAPED_CLOSE, "")
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def _top_level_pieces(text: str) -> list[str]:
    """Cut text into plain runs and top-level parenthesised groups, in order.

    A group starts at a `(` seen at depth 0 and ends at the `)` that brings the depth back to 0.
    Once a stray `)` drives the depth below 0, no later `(` starts a group until the depth is back
    at 0, exactly as ComfyUI counts.
    """
    pieces: list[str] = []
    depth = 0
    piece_start = 0
    for index, char in enumerate(text):
        if char == "(":
            if depth == 0 and index > piece_start:
                pieces.append(text[piece_start:index])
                piece_start = index
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(text[piece_start : index + 1])
                piece_start = index + 1
    if piece_start < len(text):
        pieces.append(text[piece_start:])
    return pieces


def _explicit_weight(inner: str) -> tuple[str, float] | None:
    """`text:number` -> (text, number) when what follows the last colon parses as a float."""
    colon = inner.rfind(":")
    if colon <= 0:
        return None
    try:
        return inner[:colon], float(inner[colon + 1 :])
    except ValueError:
        return None


def _weighted_pieces(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _top_level_pieces(text):
        if len(piece) >= 2 and piece.startswith("(") and piece.endswith(")"):
            inner = piece[1:-1]
            explicit = _explicit_weight(inner)
            if explicit is None:
                out.extend(_weighted_pieces(inner, weight * EMPHASIS))
            else:
                out.extend(_weighted_pieces(explicit[0], explicit[1]))
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces; escapes are resolved in the returned text."""
    return [(_unescape(piece), weight) for piece, weight in _weighted_pieces(_escape(text), 1.0)]


def _split_embeddings(text: str, weight: float) -> list[Segment]:
    parts = _EMBEDDING_SPLIT.split(text)
    parts = parts[:1] + [EMBEDDING_PREFIX + part for part in parts[1:]]
    segments: list[Segment] = []
    for part in parts:
        if not part:
            continue
        words = part[len(EMBEDDING_PREFIX) :].split() if part.startswith(EMBEDDING_PREFIX) else []
        if words:
            segments.append(EmbeddingSegment(name=words[0], weight=weight, leftover=" ".join(words[1:])))
        else:
            segments.append(TextSegment(text=part, weight=weight))
    return segments


def parse_prompt(text: str) -> list[Segment]:
    """Weighted text and embedding segments of a prompt, in order."""
    segments: list[Segment] = []
    for piece, weight in parse_weights(text):
        segments.extend(_split_embeddings(piece, weight))
    return segments


def _embedding_rows(vectors: torch.Tensor, name: str) -> list[torch.Tensor] | None:
    if vectors.ndim == 1:
        return [vectors]
    if vectors.ndim == 2:
        return list(vectors.unbind(0))
    logger.warning("embedding:%s has shape %s, expected [n, dim]; ignoring it", name, tuple(vectors.shape))
    return None


def _resolve_embedding(
    segment: EmbeddingSegment, lookup: EmbeddingLookup | None, encoder_key: str
) -> tuple[torch.Tensor | None, str]:
    """The vectors for an embedding segment and the text that follows it."""
    name, leftover = segment.name, segment.leftover
    vectors = lookup(name, encoder_key) if lookup is not None else None
    if vectors is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            vectors = lookup(stripped, encoder_key) if lookup is not None and stripped else None
            # ComfyUI keeps name[len(stripped):] as the text after the name.
            leftover = f"{name[len(stripped) :]} {leftover}"
    if vectors is None:
        logger.warning("embedding:%s does not exist for %s; ignoring it", name, encoder_key)
    return vectors, leftover


def tokenize_prompt(
    text: str,
    tokenizer: ClipTokenizer,
    *,
    embedding_lookup: EmbeddingLookup | None = None,
    encoder_key: str = "clip_l",
) -> TokenizedPrompt:
    """Parse weights and embeddings, tokenize each piece, and pack the result into 77-token chunks."""
    groups: list[list[tuple[int | torch.Tensor, float]]] = []
    for segment in parse_prompt(text):
        if isinstance(segment, TextSegment):
            groups.append([(token, segment.weight) for token in tokenizer.encode(segment.text)])
            continue
        vectors, leftover = _resolve_embedding(segment, embedding_lookup, encoder_key)
        rows = _embedding_rows(vectors, segment.name) if vectors is not None else None
        if rows:
            groups.append([(row, segment.weight) for row in rows])
        if leftover:
            groups.append([(token, segment.weight) for token in tokenizer.encode(leftover)])

    chunks = chunk_groups(groups, start=tokenizer.start_token, end=tokenizer.end_token, pad=tokenizer.pad_token)
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    embeddings: dict[tuple[int, int], torch.Tensor] = {}
    for chunk_index, chunk in enumerate(chunks):
        chunk_ids: list[int] = []
        for position, (token, _) in enumerate(chunk):
            if isinstance(token, torch.Tensor):
                embeddings[(chunk_index, position)] = token
                chunk_ids.append(EMBEDDING_SLOT_ID)
            else:
                chunk_ids.append(token)
        ids.append(chunk_ids)
        weights.append([weight for _, weight in chunk])
    return TokenizedPrompt(ids=ids, weights=weights, embeddings=embeddings)
