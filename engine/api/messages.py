"""Schemas of the websocket's text frames, made from where the frames are made.

An execution event's frame is ``{"type": EventClass.type, "data": dataclasses.asdict(event)}``
(:func:`engine.events.to_message`), so its data schema is generated from the event dataclass itself:
every field is required (``asdict`` writes them all) and no other key is allowed. Every text event
class of :mod:`engine.events` is included without being listed here. The hub's own ``status`` and
``feature_flags`` messages take theirs from the pydantic models of :mod:`engine.api.protocol`.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from engine.api import protocol as p
from engine.events import Event, PreviewImage, WebsocketImage

#: Events sent as binary frames (their schema is the frame layout, documented in prose).
BINARY_EVENTS: frozenset[type[Event]] = frozenset({PreviewImage, WebsocketImage})

#: Text messages the hub makes itself: message type -> data model.
HUB_MESSAGES: dict[str, str] = {"status": p.StatusData.__name__, "feature_flags": p.FeatureFlags.__name__}


def text_events() -> list[type[Event]]:
    """Every event class (subclasses of subclasses too) that travels as a JSON text frame."""
    found: list[type[Event]] = []
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if cls.type and cls not in BINARY_EVENTS and cls not in found:
            found.append(cls)
    return found


def event_data_schema(cls: type[Event]) -> dict[str, Any]:
    """JSON schema of an event's ``data``: its dataclass fields, all required, nothing else."""
    schema = TypeAdapter(cls).json_schema(mode="serialization", ref_template=p.REF)
    schema["required"] = list(schema.get("properties", {}))
    schema["additionalProperties"] = False
    return schema


def _frame(message_type: str, data_component: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"const": message_type}, "data": p.ref(data_component)},
        "required": ["type", "data"],
        "additionalProperties": False,
    }


def message_components() -> dict[str, dict[str, Any]]:
    """Component schemas: each event's data, ``WsMessage_<type>`` per frame, and ``WsMessage`` (any frame)."""
    components: dict[str, dict[str, Any]] = {}
    data_of = dict(HUB_MESSAGES)
    for cls in text_events():
        components[cls.__name__] = event_data_schema(cls)
        data_of[cls.type] = cls.__name__
    mapping: dict[str, str] = {}
    for message_type, data_component in data_of.items():
        name = f"WsMessage_{message_type}"
        components[name] = _frame(message_type, data_component)
        mapping[message_type] = p.REF.format(model=name)
    components["WsMessage"] = {
        "description": "A websocket text frame: compact JSON {type, data}. Binary frames (previews, only when the "
                       "server has them enabled and the client asked; SaveImageWebsocket's images, always) are "
                       "a big-endian uint32 event type (1 = preview image: uint32 image type 1 JPEG / 2 PNG, "
                       "then the bytes; 4 = preview with metadata: uint32 length, metadata JSON, image bytes).",
        "oneOf": [{"$ref": target} for target in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return components
