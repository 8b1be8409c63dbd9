"""Prompt weighting and textual-inversion tokens, with ComfyUI's semantics.

Syntax: engine/backend/prompt_grammar.py, which parses prompts into text and embedding segments.

Tokenization (`tokenize_prompt`) turns each weighted piece into one group of tokens for
`tokenizer.chunk_groups`; an embedding contributes one group of its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.backend.prompt_grammar import EMBEDDING_PREFIX as EMBEDDING_PREFIX  # re-exported for the nodes
from engine.backend.prompt_grammar import EmbeddingSegment, TextSegment, parse_prompt
from engine.backend.prompt_grammar import parse_weights as parse_weights  # re-exported
from engine.backend.tokenizer import ClipTokenizer, chunk_groups

logger = logging.getLogger(__name__)

# Token id stored at the slots that an embedding vector replaces (the vector, not the id, is encoded).
EMBEDDING_SLOT_ID = 0

EmbeddingLookup = Callable[[str, str], torch.Tensor | None]
"""(name, encoder key "clip_l" | "clip_h" | "clip_g") -> [n, dim] (or [dim]) vectors, or None."""


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
