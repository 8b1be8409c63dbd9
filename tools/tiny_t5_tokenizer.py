"""A tiny T5-style sentencepiece tokenizer trained on Tiny Shapes captions (the SD3 demo's text encoder).

T5's own vocabulary (32,000 pieces) would make the demo's token embedding alone larger than the whole
model, so the demo ships its own unigram sentencepiece model with T5's special ids -- ``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2, no ``<s>`` -- trained with the ``sentencepiece`` package on captions drawn from
the dataset. It is a BPE model (T5's is unigram; the file format and Loom's reading are the same): on
this tiny corpus sentencepiece's unigram trainer stops at 49 pieces and spells most colours letter by
letter, while 128 BPE pieces hold every caption word whole (``▁red``, ``▁background``, ``▁center``, ...)
and still spell any other word from letters. Loom reads it back as any T5 tokenizer
(:class:`engine.backend.t5_tokenizer.T5Tokenizer`): for ``models/checkpoints/tiny-shapes-sd3.safetensors`` it is
``models/checkpoints/tiny-shapes-sd3/spiece.model``.

Normalisation is ``nmt_nfkc_cf`` (NFKC with case folding), so "A Red Circle" tokenizes as "a red circle".
Training runs on one thread over the captions in the order given, so the file is a function of the
captions (and the sentencepiece version).
"""

from __future__ import annotations

import importlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.backend.t5_tokenizer import T5_EOS_TOKEN, T5_PAD_TOKEN
from tools.tiny_shapes_data import canonical_caption, random_caption, sample_spec

log = logging.getLogger("tools.tiny_t5_tokenizer")

T5_UNK_TOKEN = 2
DEFAULT_VOCAB_SIZE = 128
TOKENIZER_FILE = "spiece.model"


def caption_corpus(seed: int, count: int) -> list[str]:
    """``count`` training captions (random phrasings, parts left out as in training) plus every canonical one
    of the first ``count // 4`` specs, from the random stream ``(seed, 7)``."""
    rng = np.random.default_rng([seed, 7])
    specs = [sample_spec(rng) for _ in range(count)]
    captions = [random_caption(spec, rng) for spec in specs]
    return captions + [canonical_caption(spec) for spec in specs[: count // 4]]


def train_sentencepiece(captions: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> bytes:
    """The serialized BPE sentencepiece model trained on ``captions`` with T5's special ids."""
    sentencepiece: Any = importlib.import_module("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=T5_PAD_TOKEN,
        eos_id=T5_EOS_TOKEN,
        unk_id=T5_UNK_TOKEN,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf",
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def write_tokenizer(folder: Path, seed: int, count: int = 4000, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train on :func:`caption_corpus` and write ``folder/spiece.model``; the path written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TOKENIZER_FILE
    path.write_bytes(train_sentencepiece(caption_corpus(seed, count), vocab_size))
    log.info("wrote %s (%d pieces, %d bytes)", path, vocab_size, path.stat().st_size)
    return path
