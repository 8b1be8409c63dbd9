"""What a prompt needs from the machine that runs it: model files (routing) and input files (shipping).

Inputs declared with ``file_folder`` name a file: a model folder ("checkpoints", "loras", ...) or
"input". Only literal values count; a value that arrives over a link is not known before running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.folders import split_annotation
from engine.registry import NodeRegistry

FILE_KINDS = ("input", "output", "temp")


@dataclass(frozen=True)
class PromptNeeds:
    """Model files as (folder, name) and files of the input/output/temp folders as (kind, name)."""

    models: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    files: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def checkpoints(self) -> frozenset[str]:
        return frozenset(name for folder, name in self.models if folder == "checkpoints")


def prompt_needs(prompt: Mapping[str, Mapping[str, Any]], registry: NodeRegistry) -> PromptNeeds:
    """The files an API-format prompt names in its literal inputs (unknown classes are skipped)."""
    models: set[tuple[str, str]] = set()
    files: set[tuple[str, str]] = set()
    for node in prompt.values():
        cls = registry.get(str(node.get("class_type")))
        if cls is None:
            continue
        inputs = node.get("inputs") or {}
        for spec in cls.inputs:
            value = inputs.get(spec.name)
            if not spec.file_folder or not isinstance(value, str) or not value:
                continue
            if spec.file_folder == "input":
                files.add(split_annotation(value))
            else:
                models.add((spec.file_folder, value))
    return PromptNeeds(frozenset(models), frozenset(files))
