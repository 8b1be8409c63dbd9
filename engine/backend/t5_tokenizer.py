"""T5's sentencepiece tokenizer, read from a file beside the user's text encoder, and ComfyUI's T5 prompt rules.

Nothing is downloaded: the tokenizer is a file the user keeps next to the T5 encoder. For a text
encoder ``DIR/NAME.safetensors`` (e.g. ``models/text_encoders/t5xxl_fp16.safetensors``) the folders

1. ``DIR/NAME/``           (``t5xxl_fp16/`` beside ``t5xxl_fp16.safetensors``)
2. ``DIR/t5_tokenizer/``   (one tokenizer shared by every T5 file of the folder)
3. ``DIR/``                (the encoder's own folder, as in a downloaded HF repository)

are searched in that order, and in each folder ``tokenizer.json`` (read with the ``tokenizers``
library) before ``spiece.model`` (read with the ``sentencepiece`` package, which must then be
installed). The first file found is used. T5-XXL's files are those of ``google/t5-v1_1-xxl`` (the same
vocabulary as every T5 v1.1 model: 32,000 sentencepiece pieces, ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2).
Where none is found, :class:`T5TokenizerNotFoundError` lists the places to put one.

Prompt rules (ComfyUI's ``SDTokenizer`` as SD3's and Flux's ``T5XXLTokenizer`` configure it:
no start token, ``pad_with_end=False``, ``pad_to_max_length=False``, ``max_length=99999999``):

- weights and ``embedding:NAME`` are parsed as for CLIP (engine/backend/prompt_grammar.py); each
  weighted piece is split into words at spaces (newlines count as spaces) and every word is tokenized
  on its own, without the end token;
- the tokens form ONE sequence (no 77-token chunks, no length limit), followed by the end token 1;
- the sequence is padded with token 0 to ``min_length``: 77 for SD3 / SD3.5, 256 for Flux (ComfyUI
  uses 256 for both Flux dev and schnell; the 512 of diffusers' Flux dev pipeline is not ComfyUI's);
- special tokens and padding have weight 1.0; a word's tokens carry its piece's weight.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.backend.prompt_grammar import EmbeddingSegment, TextSegment, parse_prompt
from engine.backend.prompt_weights import (
    EMBEDDING_SLOT_ID,
    EmbeddingLookup,
    _embedding_rows,
    _resolve_embedding,
)

logger = logging.getLogger(__name__)

T5_PAD_TOKEN = 0
T5_EOS_TOKEN = 1
SD3_T5_MIN_LENGTH = 77
FLUX_T5_MIN_LENGTH = 256
T5_EMBEDDING_KEY = "t5xxl"
TOKENIZER_FILE_NAMES = ("tokenizer.json", "spiece.model")
SHARED_TOKENIZER_FOLDER = "t5_tokenizer"
_EOS_PIECE = "</s>"


class T5TokenizerNotFoundError(FileNotFoundError):
    """No T5 tokenizer file beside a text encoder; the message says where to put one."""


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def eos_id(self) -> int | None: ...


class _TokenizersBackend:
    """A ``tokenizer.json`` read with the ``tokenizers`` library (special tokens are added by Loom)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def eos_id(self) -> int | None:
        return self._tokenizer.token_to_id(_EOS_PIECE)


class _SentencePieceBackend:
    """A sentencepiece ``spiece.model`` read with the ``sentencepiece`` package."""

    def __init__(self, path: Path) -> None:
        try:
            sentencepiece: Any = importlib.import_module("sentencepiece")
        except ImportError as error:
            raise ImportError(
                f"{path} is a sentencepiece model: install the sentencepiece package (pip install sentencepiece) "
                "or put T5's tokenizer.json in its place"
            ) from error
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def encode(self, text: str) -> list[int]:
        return [int(token) for token in self._processor.encode(text)]

    def eos_id(self) -> int | None:
        eos = int(self._processor.eos_id())
        return eos if eos >= 0 else None


def tokenizer_search_dirs(encoder_path: str | Path) -> list[Path]:
    """The folders searched for the tokenizer of the text encoder at ``encoder_path``, in order."""
    path = Path(encoder_path)
    folder = path.parent
    return [folder / path.stem, folder / SHARED_TOKENIZER_FOLDER, folder]


def find_t5_tokenizer_file(encoder_path: str | Path) -> Path:
    """The tokenizer file for the text encoder at ``encoder_path`` (the rule is in the module docstring).

    Raises T5TokenizerNotFoundError, listing the places searched, when there is none.
    """
    folders = tokenizer_search_dirs(encoder_path)
    for folder in folders:
        for name in TOKENIZER_FILE_NAMES:
            candidate = folder / name
            if candidate.is_file():
                logger.debug("T5 tokenizer for %s: %s", encoder_path, candidate)
                return candidate
    places = "\n".join(f"  {folder}/" for folder in folders)
    raise T5TokenizerNotFoundError(
        f"no T5 tokenizer found for {encoder_path}. Loom never downloads tokenizers: put T5's tokenizer.json "
        f"(or spiece.model), e.g. from the google/t5-v1_1-xxl repository, into one of these folders "
        f"(searched in this order):\n{places}"
    )


class T5Tokenizer:
    """T5's sentencepiece tokenizer from a local ``tokenizer.json`` or ``spiece.model``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise T5TokenizerNotFoundError(f"T5 tokenizer file {self.path} does not exist")
        if self.path.suffix == ".json":
            self._backend: _Backend = _TokenizersBackend(self.path)
        else:
            self._backend = _SentencePieceBackend(self.path)
        eos = self._backend.eos_id()
        if eos is not None and eos != T5_EOS_TOKEN:
            logger.warning("T5 tokenizer %s has </s> = %d; ComfyUI's T5 end token is %d", self.path, eos, T5_EOS_TOKEN)
        self.eos_token = eos if eos is not None else T5_EOS_TOKEN
        self.pad_token = T5_PAD_TOKEN

    @classmethod
    def for_encoder(cls, encoder_path: str | Path) -> T5Tokenizer:
        """The tokenizer kept beside the text encoder at ``encoder_path`` (:func:`find_t5_tokenizer_file`)."""
        return cls(find_t5_tokenizer_file(encoder_path))

    def encode_word(self, word: str) -> list[int]:
        """Token ids of one word, without the end token."""
        return self._backend.encode(word)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as ComfyUI makes them: word by word at spaces, without the end token."""
        ids: list[int] = []
        for word in _words(text):
            ids.extend(self.encode_word(word))
        return ids


@dataclass(frozen=True)
class T5Tokens:
    """A prompt as one sequence of T5 token ids with a weight per token.

    ``embeddings`` maps a position to the [d_model] vector that replaces its token embedding; such
    positions hold ``EMBEDDING_SLOT_ID`` in ``ids``.
    """

    ids: list[int]
    weights: list[float]
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def _words(text: str) -> list[str]:
    """ComfyUI's split of a weighted piece: newlines become spaces, then split at single spaces."""
    return [word for word in text.replace("\n", " ").split(" ") if word]


def _segment_tokens(
    segment: TextSegment | EmbeddingSegment,
    tokenizer: T5Tokenizer,
    lookup: EmbeddingLookup | None,
    encoder_key: str,
) -> list[tuple[int | torch.Tensor, float]]:
    """(token id or embedding row, weight) pairs of one parsed prompt segment."""
    if isinstance(segment, TextSegment):
        return [(token, segment.weight) for token in tokenizer.encode(segment.text)]
    vectors, leftover = _resolve_embedding(segment, lookup, encoder_key)
    rows = _embedding_rows(vectors, segment.name) if vectors is not None else None
    pairs: list[tuple[int | torch.Tensor, float]] = [(row, segment.weight) for row in rows or []]
    pairs.extend((token, segment.weight) for token in tokenizer.encode(leftover))
    return pairs


def pad_tokens(ids: Sequence[int], weights: Sequence[float], *, eos: int, pad: int, min_length: int) -> T5Tokens:
    """``ids`` + the end token, padded with ``pad`` to ``min_length`` (added tokens weigh 1.0)."""
    out_ids = [*ids, eos]
    out_weights = [*weights, 1.0]
    missing = max(0, min_length - len(out_ids))
    return T5Tokens(ids=out_ids + [pad] * missing, weights=out_weights + [1.0] * missing)


def tokenize_t5_prompt(
    text: str,
    tokenizer: T5Tokenizer,
    *,
    min_length: int = SD3_T5_MIN_LENGTH,
    embedding_lookup: EmbeddingLookup | None = None,
    encoder_key: str = T5_EMBEDDING_KEY,
) -> T5Tokens:
    """A prompt -> T5 ids and weights, ComfyUI's way (module docstring): words, end token, padding.

    ``min_length``: :data:`SD3_T5_MIN_LENGTH` (77) or :data:`FLUX_T5_MIN_LENGTH` (256).
    """
    pairs: list[tuple[int | torch.Tensor, float]] = []
    for segment in parse_prompt(text):
        pairs.extend(_segment_tokens(segment, tokenizer, embedding_lookup, encoder_key))
    ids: list[int] = []
    embeddings: dict[int, torch.Tensor] = {}
    for position, (token, _) in enumerate(pairs):
        if isinstance(token, torch.Tensor):
            embeddings[position] = token
            ids.append(EMBEDDING_SLOT_ID)
        else:
            ids.append(token)
    padded = pad_tokens(ids, [weight for _, weight in pairs], eos=tokenizer.eos_token, pad=tokenizer.pad_token,
                        min_length=min_length)
    return T5Tokens(ids=padded.ids, weights=padded.weights, embeddings=embeddings)
