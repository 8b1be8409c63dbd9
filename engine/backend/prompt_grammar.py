"""The prompt-text grammar of CLIPTextEncode, with ComfyUI's semantics: weights and ``embedding:NAME``.

Pure text, no torch: the text encoder (engine/backend/prompt_weights.py) tokenizes what this parses,
and the cluster front reads the embedding names a prompt needs with it.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EMPHASIS = 1.1
EMBEDDING_PREFIX = "embedding:"

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
