"""What a prompt needs from the machine that runs it: model files (routing) and input files (shipping).

Inputs declared with ``file_folder`` name a file: a model folder ("checkpoints", "loras", ...) or
"input". Textual-inversion embeddings are named inside prompt text (``embedding:NAME``), read with the
prompt grammar the text encoder uses (engine/backend/prompt_grammar.py: no torch on the front). Only
literal values count; a value that arrives over a link is not known before running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.backend.prompt_grammar import EmbeddingSegment, parse_prompt
from engine.folders import EMBEDDING_SUFFIXES, split_annotation
from engine.registry import NodeRegistry


@dataclass(frozen=True)
class PromptNeeds:
    """Model files as (folder, name) and files of the input/output/temp folders as (kind, name)."""

    models: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    files: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    embeddings: frozenset[str] = field(default_factory=frozenset)  # names as written after embedding:

    @property
    def checkpoints(self) -> frozenset[str]:
        return frozenset(name for folder, name in self.models if folder == "checkpoints")


#: Combo values that name no file (ComfyUI's "[None]" choices, e.g. TrainLoraNode's existing_lora).
NO_FILE = frozenset({"[None]", "None"})


def prompt_needs(prompt: Mapping[str, Mapping[str, Any]], registry: NodeRegistry) -> PromptNeeds:
    """The files an API-format prompt names in its literal inputs (unknown classes are skipped)."""
    models: set[tuple[str, str]] = set()
    files: set[tuple[str, str]] = set()
    embeddings: set[str] = set()
    for node in prompt.values():
        cls = registry.get(str(node.get("class_type")))
        if cls is None:
            continue
        inputs = node.get("inputs") or {}
        for spec in cls.inputs:
            value = inputs.get(spec.name)
            if not isinstance(value, str) or not value or value in NO_FILE:
                continue
            if not spec.file_folder:
                if "embedding:" in value:
                    embeddings.update(embedding_names(value))
            elif spec.file_folder == "input":
                files.add(split_annotation(value))
            else:
                models.add((spec.file_folder, value))
    return PromptNeeds(frozenset(models), frozenset(files), frozenset(embeddings))


def embedding_names(text: str) -> list[str]:
    """The ``embedding:NAME`` names of a prompt text, as the text encoder reads them."""
    return [segment.name for segment in parse_prompt(text) if isinstance(segment, EmbeddingSegment)]


def has_embedding(files: frozenset[str], name: str) -> bool:
    """Whether an embeddings folder listing ``files`` resolves ``name`` as the text encoder does (the name
    as written, or with commas stripped from its ends; with or without a file ending)."""
    return any(candidate in files or any(candidate + suffix in files for suffix in EMBEDDING_SUFFIXES)
               for candidate in {name, name.strip(",")} if candidate)
