"""What the compatibility modules and the adapted nodes share: one Loom instance's folders and registry, the
extra model folders packs add, the server packs talk to, and the node that runs now.

ComfyUI's module interface is global (``folder_paths.get_filename_list("loras")`` names no instance), so the
compatibility modules read the one :class:`CompatRuntime` that :func:`engine.custom_nodes.compat.install`
set (:func:`active`). The node that runs now lives in a :class:`contextvars.ContextVar` set by the adapted
node for the span of the pack's call (:func:`running`), so ``comfy.utils.ProgressBar`` and
``comfy.model_management.throw_exception_if_processing_interrupted`` reach the right prompt and node from
whichever worker thread runs it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.context import RunContext
from engine.errors import LoomError
from engine.folders import Folders
from engine.registry import NodeRegistry

__all__ = ["CompatRuntime", "NotLoaded", "active", "current_run", "running", "set_active"]


class NotLoaded(LoomError):
    """A compatibility module was used before custom nodes were loaded."""


@dataclass
class CompatRuntime:
    """One Loom instance as the compatibility modules see it."""

    folders: Folders
    registry: NodeRegistry
    #: Folders packs added with ``folder_paths.add_model_folder_path``, by model kind, in the order added.
    extra_model_dirs: dict[str, list[Path]] = field(default_factory=dict)
    #: File endings packs registered for kinds Loom does not know (``folder_names_and_paths``).
    extra_extensions: dict[str, set[str]] = field(default_factory=dict)
    #: The ``server.PromptServer`` instance packs reach (engine/custom_nodes/compat/server.py), once made.
    prompt_server: Any = None
    #: ComfyUI-style classes over Loom's nodes, made once per name (engine/custom_nodes/compat/nodes.py).
    core_classes: dict[str, type] = field(default_factory=dict)


_ACTIVE: list[CompatRuntime] = []  # at most one: the runtime of the Loom instance that loaded custom nodes
_CURRENT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("loom_custom_node_run", default=None)


def set_active(runtime: CompatRuntime) -> None:
    """Make ``runtime`` the one the compatibility modules read (the last Loom instance to load packs wins)."""
    _ACTIVE[:] = [runtime]


def active() -> CompatRuntime:
    """The runtime the compatibility modules read; NotLoaded before custom nodes were loaded."""
    if not _ACTIVE:
        raise NotLoaded("ComfyUI's modules (folder_paths, comfy.*, nodes, server) work once custom nodes are "
                        "loaded: start Loom with custom_nodes/ or --custom-nodes-dir")
    return _ACTIVE[0]


def current_run() -> RunContext | None:
    """The RunContext of the custom node running in this thread now, or None outside a node."""
    return _CURRENT.get()


@contextmanager
def running(ctx: RunContext) -> Iterator[RunContext]:
    """Mark ``ctx`` as the node running now for the span of a pack's call; ``PromptServer.instance`` names its
    client (``client_id``, when the prompt's events go to one) and node (``last_node_id``), as in ComfyUI."""
    server = _ACTIVE[0].prompt_server if _ACTIVE else None
    if server is not None:
        server.client_id = ctx.client_id
        server.last_node_id = ctx.node_id
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
