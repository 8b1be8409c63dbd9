"""CLIP byte-level BPE tokenizer and 77-token chunking.

One tokenizer serves every Stable Diffusion text encoder: OpenAI's CLIP ViT-L/14 (SD1.x, SDXL's
first encoder) and OpenCLIP ViT-H/14 and ViT-bigG/14 (SD2.x, SDXL's second encoder) share the same
vocabulary. They differ only in the padding id: 49407 (the end token) for OpenAI CLIP, 0 for OpenCLIP.

Text normalisation follows what ComfyUI gets from transformers' Python `CLIPTokenizer` when ftfy is
not installed (the usual ComfyUI install): control characters are dropped, other whitespace becomes a
space, CJK ideographs are surrounded by spaces, the text is NFC-normalised and lower-cased. The text
is then pre-tokenized with CLIP's regular expression, each piece is mapped to byte symbols, and BPE
merges are applied with `</w>` marking the end of a word.

The vocabulary (`data/bpe_simple_vocab_16e6.txt.gz`, see `data/PROVENANCE.md`) is read on first use,
once per tokenizer instance.

Chunking (`chunk_groups`) mirrors ComfyUI: each chunk is `[start] + 75 tokens + [end]`, padded to 77.
Tokens arrive in *groups* (a weighted prompt segment, the rows of a textual-inversion embedding, or
the text after an embedding). A group shorter than 8 tokens that would straddle a chunk edge is moved
whole into the next chunk (the current one is closed with the end token and padded); a group of 8 or
more tokens is split exactly at the edge. Unweighted text given to `ClipTokenizer.tokenize` is one
group, so it is split every 75 tokens.
"""

from __future__ import annotations

import gzip
import logging
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import regex

logger = logging.getLogger(__name__)

START_TOKEN = 49406
END_TOKEN = 49407
OPENAI_PAD_TOKEN = END_TOKEN
OPENCLIP_PAD_TOKEN = 0
CHUNK_LENGTH = 77
CHUNK_CONTENT_LENGTH = CHUNK_LENGTH - 2
MIN_SPLIT_GROUP = 8
VOCAB_SIZE = 49408
DEFAULT_VOCAB_PATH = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"

_N_MERGES = VOCAB_SIZE - 2 * 256 - 2
_END_OF_WORD = "</w>"
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_PRETOKENIZE_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
_BPE_CACHE_LIMIT = 200_000
# CJK ideograph blocks that get spaces around them (the CJK Unified Ideographs, their extensions
# A-E and the compatibility ideographs). Hiragana, katakana and hangul are not in them.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

T = TypeVar("T")


def byte_symbols() -> list[str]:
    """The 256 printable characters standing for the bytes 0..255, in byte order.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen, ...)
    are given the code points 256, 257, ... in byte order, so every symbol is visible and unique.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols: list[str] = []
    next_free = 256
    for byte in range(256):
        if byte in keep:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(next_free))
            next_free += 1
    return symbols


def _is_cjk(code_point: int) -> bool:
    return any(low <= code_point <= high for low, high in _CJK_RANGES)


def clean_text(text: str) -> str:
    """Normalise a prompt the way ComfyUI's tokenizer does before BPE (see the module docstring)."""
    kept: list[str] = []
    for char in text:
        code_point = ord(char)
        if code_point in (0, 0xFFFD):
            continue
        category = unicodedata.category(char)
        if char in " \t\n\r" or category == "Zs":
            kept.append(" ")
        elif category.startswith("C"):
            continue
        elif _is_cjk(code_point):
            kept.append(f" {char} ")
        else:
            kept.append(char)
    normalized = unicodedata.normalize("NFC", "".join(kept))
    return " ".join(normalized.split()).lower()


@dataclass(frozen=True)
class _Vocabulary:
    encoder: dict[str, int]
    decoder: dict[int, str]
    merge_ranks: dict[tuple[str, str], int]
    pretokenizer: regex.Pattern[str]
    byte_to_symbol: tuple[str, ...]
    symbol_to_byte: dict[str, int]


def _load_vocabulary(path: Path) -> _Vocabulary:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    # Line 0 is a "#version" header; the merges follow, one "left right" pair per line.
    merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
    if len(merges) != _N_MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"{path} is not a CLIP BPE merge list: expected {_N_MERGES} merge pairs")
    symbols = byte_symbols()
    # Vocabulary order: the bytes that stand for themselves first, then the remapped ones.
    ordered = sorted(symbols, key=lambda symbol: (ord(symbol) >= 256, ord(symbol)))
    tokens = ordered + [symbol + _END_OF_WORD for symbol in ordered]
    tokens += ["".join(pair) for pair in merges]
    tokens += list(_SPECIAL_TOKENS)
    encoder = {token: index for index, token in enumerate(tokens)}
    if len(encoder) != VOCAB_SIZE:
        raise ValueError(f"{path} gives {len(encoder)} distinct tokens, expected {VOCAB_SIZE}")
    return _Vocabulary(
        encoder=encoder,
        decoder={index: token for token, index in encoder.items()},
        merge_ranks={(pair[0], pair[1]): rank for rank, pair in enumerate(merges)},
        pretokenizer=regex.compile(_PRETOKENIZE_PATTERN, regex.IGNORECASE),
        byte_to_symbol=tuple(symbols),
        symbol_to_byte={symbol: byte for byte, symbol in enumerate(symbols)},
    )


def _merge_word(symbols: list[str], merge_ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one word, always merging the best-ranked adjacent pair first."""
    while len(symbols) > 1:
        best_rank: int | None = None
        best_pair: tuple[str, str] | None = None
        for pair in zip(symbols, symbols[1:], strict=False):
            rank = merge_ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_pair = rank, pair
        if best_pair is None:
            break
        merged: list[str] = []
        index = 0
        while index < len(symbols):
            if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == best_pair:
                merged.append(symbols[index] + symbols[index + 1])
                index += 2
            else:
                merged.append(symbols[index])
                index += 1
        symbols = merged
    return symbols


class _VocabularySource:
    """Loads the vocabulary on first use (thread-safe) and keeps the BPE cache of words seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._vocabulary: _Vocabulary | None = None
        self._lock = threading.Lock()
        self.word_cache: dict[str, tuple[int, ...]] = {}

    def get(self) -> _Vocabulary:
        vocabulary = self._vocabulary
        if vocabulary is None:
            with self._lock:
                if self._vocabulary is None:
                    logger.debug("loading CLIP BPE vocabulary from %s", self.path)
                    self._vocabulary = _load_vocabulary(self.path)
                vocabulary = self._vocabulary
        return vocabulary


class ClipTokenizer:
    """CLIP BPE tokenizer. `pad_token` is 49407 for OpenAI CLIP-L and 0 for OpenCLIP (ViT-H, bigG)."""

    def __init__(self, vocab_path: str | Path | None = None, *, pad_token: int = OPENAI_PAD_TOKEN) -> None:
        self.vocab_path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB_PATH
        self.start_token = START_TOKEN
        self.end_token = END_TOKEN
        self.pad_token = pad_token
        self._source = _VocabularySource(self.vocab_path)

    def with_pad_token(self, pad_token: int) -> ClipTokenizer:
        """A tokenizer that pads with `pad_token` and shares this one's (lazily loaded) vocabulary."""
        twin = ClipTokenizer(self.vocab_path, pad_token=pad_token)
        twin._source = self._source
        return twin

    def _vocab(self) -> _Vocabulary:
        return self._source.get()

    @property
    def vocab_size(self) -> int:
        return len(self._vocab().encoder)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (byte symbols, `</w>` marks a word end), or None."""
        return self._vocab().encoder.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self._vocab().decoder[token_id]

    def _encode_word(self, word: str, vocabulary: _Vocabulary) -> tuple[int, ...]:
        cache = self._source.word_cache
        cached = cache.get(word)
        if cached is not None:
            return cached
        if word in _SPECIAL_TOKENS:
            ids: tuple[int, ...] = (vocabulary.encoder[word],)
        else:
            symbols = [vocabulary.byte_to_symbol[byte] for byte in word.encode("utf-8")]
            symbols[-1] += _END_OF_WORD
            ids = tuple(vocabulary.encoder[piece] for piece in _merge_word(symbols, vocabulary.merge_ranks))
        if len(cache) >= _BPE_CACHE_LIMIT:
            cache.clear()
        cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start, end or padding."""
        vocabulary = self._vocab()
        ids: list[int] = []
        for word in vocabulary.pretokenizer.findall(clean_text(text)):
            ids.extend(self._encode_word(word, vocabulary))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text for content ids (start and end are dropped; OpenCLIP padding 0 reads as "!"); for logs."""
        vocabulary = self._vocab()
        special = {self.start_token, self.end_token}
        pieces = "".join(vocabulary.decoder[token_id] for token_id in ids if token_id not in special)
        space = vocabulary.byte_to_symbol[ord(" ")]
        raw = bytes(vocabulary.symbol_to_byte[symbol] for symbol in pieces.replace(_END_OF_WORD, space))
        return raw.decode("utf-8", errors="replace").strip()

    def empty_chunk(self) -> list[int]:
        """The 77 ids of the empty prompt: start, end, then padding."""
        return [self.start_token, self.end_token] + [self.pad_token] * (CHUNK_LENGTH - 2)

    def tokenize(self, text: str) -> list[list[int]]:
        """Unweighted text as chunks of 77 ids (`[start] + 75 + [end]`, padded)."""
        group = [(token_id, 1.0) for token_id in self.encode(text)]
        chunks = chunk_groups([group], start=self.start_token, end=self.end_token, pad=self.pad_token)
        return [[token for token, _ in chunk] for chunk in chunks]


def chunk_groups(
    groups: Iterable[Sequence[tuple[T, float]]],
    *,
    start: int = START_TOKEN,
    end: int = END_TOKEN,
    pad: int = OPENAI_PAD_TOKEN,
    length: int = CHUNK_LENGTH,
    min_split: int = MIN_SPLIT_GROUP,
) -> list[list[tuple[T | int, float]]]:
    """Pack groups of (token, weight) into chunks of `length`: `[start] + content + [end] + padding`.

    Special tokens get weight 1.0. A group shorter than `min_split` is never split across two
    chunks (it moves to the next chunk); a longer group is cut exactly where the chunk is full.
    There is always at least one chunk.
    """
    capacity = length - 1  # room for start + content; the end token takes the last slot
    chunks: list[list[tuple[T | int, float]]] = []
    chunk: list[tuple[T | int, float]] = [(start, 1.0)]

    def close(current: list[tuple[T | int, float]]) -> None:
        current.append((end, 1.0))
        current.extend([(pad, 1.0)] * (length - len(current)))
        chunks.append(current)

    for group in groups:
        remaining = list(group)
        splittable = len(remaining) >= min_split
        while remaining:
            free = capacity - len(chunk)
            if len(remaining) <= free:
                chunk.extend(remaining)
                break
            if splittable:
                chunk.extend(remaining[:free])
                remaining = remaining[free:]
            close(chunk)
            chunk = [(start, 1.0)]
    close(chunk)
    return chunks
