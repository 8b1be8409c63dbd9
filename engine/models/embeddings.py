"""Textual-inversion embeddings: finding ``embedding:NAME`` in the embeddings folder and reading its vectors.

A prompt names an embedding as ComfyUI does: ``NAME`` is a path relative to any ``embeddings``
folder, with or without its ending; without one, ``.safetensors``, ``.pt`` and ``.bin`` are tried
first (ComfyUI's order), then the other model endings, so every name ``GET /embeddings`` lists
(:meth:`engine.folders.Folders.embedding_names`) can be used. Names that leave the folder are refused.

Files are read with safetensors or ``torch.load(weights_only=True)``; nothing else. Formats:

* AUTOMATIC1111 / diffusers training scripts: ``{"string_to_param": {"*": tensor [n, dim]}, ...}``;
* SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, one entry per text encoder; an SD1 model reads
  ``clip_l``, SD2 ``clip_h``;
* anything else that is a mapping of tensors, e.g. ``{"emb_params": tensor}``: its first tensor.

A vector width that does not match an encoder is dropped by the encoder with a warning (ComfyUI's
rule), so an SD1.5 embedding in an SDXL prompt reaches clip_l only.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.backend.prompt_weights import EmbeddingLookup
from engine.errors import PathOutsideRoot
from engine.folders import EMBEDDING_SUFFIXES, Folders, join_inside

log = logging.getLogger(__name__)

FOLDER = "embeddings"
SUFFIXES = EMBEDDING_SUFFIXES  # endings tried, in order, for a name given without one


def find_embedding(folders: Folders, name: str) -> Path | None:
    """The file of ``embedding:name`` in any embeddings folder, or None (names leaving the folder too)."""
    for directory in folders.model_dirs(FOLDER):
        for candidate in (name, *(name + suffix for suffix in SUFFIXES)):
            try:
                path = join_inside(directory, candidate)
            except PathOutsideRoot as exc:
                log.warning("embedding:%s refused: %s", name, exc)
                return None
            if path.is_file():
                return path
    return None


def read_embedding_file(path: Path) -> object:
    """The raw contents of an embedding file; ValueError naming the file when it cannot be read."""
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"embedding file {path.name} cannot be read ({exc}); embeddings are read from "
                         ".safetensors or with torch.load(weights_only=True): re-save it as .safetensors") from exc


def _first_tensor(values: Mapping[object, object]) -> torch.Tensor | None:
    return next((value for value in values.values() if isinstance(value, torch.Tensor)), None)


def embedding_vectors(data: object, encoder_key: str, file_name: str = "") -> torch.Tensor:
    """The [n, dim] vectors an embedding file holds for one text encoder (``clip_l``, ``clip_h``, ``clip_g``)."""
    vectors: torch.Tensor | None = None
    if isinstance(data, Mapping):
        params = data.get("string_to_param")
        if isinstance(params, Mapping):
            vectors = _first_tensor(params)
        elif isinstance(data.get(encoder_key), torch.Tensor):
            vectors = data[encoder_key]
        else:
            vectors = _first_tensor(data)
    if vectors is None:
        raise ValueError(f"embedding file {file_name or '?'} holds no vectors Loom recognises; expected "
                         "{'string_to_param': {'*': tensor}}, {'clip_l': ..., 'clip_g': ...} or {'emb_params': tensor}")
    vectors = vectors.detach().float()
    return vectors.reshape(-1, vectors.shape[-1]) if vectors.ndim != 1 else vectors


def embedding_lookup(folders: Folders) -> EmbeddingLookup:
    """A lookup for the prompt tokenizer: (name, encoder key) -> vectors or None when there is no such file.

    Each file is read once per lookup object (SDXL's two encoders share the read).
    """
    contents: dict[Path, object] = {}

    def lookup(name: str, encoder_key: str) -> torch.Tensor | None:
        path = find_embedding(folders, name)
        if path is None:
            return None
        if path not in contents:
            contents[path] = read_embedding_file(path)
        return embedding_vectors(contents[path], encoder_key, path.name)

    return lookup


def embeddings_fingerprint(folders: Folders) -> str:
    """Changes whenever an embedding file is added, removed or rewritten (for cache keys)."""
    digest = hashlib.sha256()
    for directory in folders.model_dirs(FOLDER):
        for name in folders.list_models(FOLDER):
            path = directory / name
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
