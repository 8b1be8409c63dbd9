"""Typed execution events and the EventSink protocol.

The executor never touches a socket: it emits these to a sink. Each event's fields are exactly the
``data`` of ComfyUI's websocket message of the same ``type``, so the API layer serialises them with
:func:`to_message` and nothing else. Progress traffic is linear in the nodes executed: one
``executing`` per node, ``executed`` only for output nodes, ``progress`` only when a node reports it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""


@dataclass(frozen=True)
class ExecutionStart(Event):
    type: ClassVar[str] = "execution_start"
    prompt_id: str
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionCached(Event):
    type: ClassVar[str] = "execution_cached"
    nodes: list[str]
    prompt_id: str
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class Executing(Event):
    """A node started; ``node=None`` marks the end of a prompt (sent after history is written)."""

    type: ClassVar[str] = "executing"
    node: str | None
    display_node: str | None
    prompt_id: str


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    value: int
    max: int
    prompt_id: str
    node: str


@dataclass(frozen=True)
class Executed(Event):
    type: ClassVar[str] = "executed"
    node: str
    display_node: str
    output: dict[str, Any]
    prompt_id: str


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    type: ClassVar[str] = "execution_success"
    prompt_id: str
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionError(Event):
    type: ClassVar[str] = "execution_error"
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: list[str]
    exception_message: str
    exception_type: str
    traceback: list[str]
    current_inputs: dict[str, Any]
    current_outputs: list[str]
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    type: ClassVar[str] = "execution_interrupted"
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: list[str]
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class PreviewImage(Event):
    """A latent preview (encoded JPEG/PNG bytes), sent as a binary frame to clients that ask."""

    type: ClassVar[str] = "preview_image"
    prompt_id: str
    node: str
    image_format: str
    data: bytes


@dataclass(frozen=True)
class WebsocketImage(Event):
    """An image a node sends to the prompt's client as a binary frame (SaveImageWebsocket).

    Unlike :class:`PreviewImage` it is always delivered: it is the node's output, not a preview the
    client may decline. Frames use ComfyUI's preview layouts (type 1, or type 4 with metadata for
    clients that negotiated ``supports_preview_metadata``).
    """

    type: ClassVar[str] = "websocket_image"
    prompt_id: str
    node: str
    image_format: str
    data: bytes


#: Events that go into a history entry's ``status.messages``, as ComfyUI records them.
STATUS_EVENTS = frozenset(
    {"execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted"}
)


def to_message(event: Event) -> dict[str, Any]:
    """The ``{"type", "data"}`` websocket message of an event."""
    return {"type": event.type, "data": asdict(event)}


class EventSink(Protocol):
    """Receives events from the executor. Implementations must be thread-safe."""

    def emit(self, event: Event) -> None: ...


class ListSink:
    """Collects events in a list (tests, headless runs)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]
