"""``server``: ComfyUI's ``PromptServer``, as custom node packs use it.

``PromptServer.instance`` exists before any pack imports (packs decorate their HTTP handlers with
``@PromptServer.instance.routes.get("/my/route")`` at import time). When Loom's app is made, the routes are added
to it behind the same host, origin and token checks as every route (engine/api/server.py), and ``send_sync`` /
``send`` reach the websocket clients (one client by its id, or all).
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any, ClassVar, Protocol

from aiohttp import web

from engine.custom_nodes.runtime import current_run

__all__ = ["BinaryEventTypes", "PromptServer"]

log = logging.getLogger(__name__)


class _Sender(Protocol):
    def send_message(self, message_type: str, data: Any, client_id: str | None = None) -> None: ...


class BinaryEventTypes:
    """ComfyUI's binary websocket frame kinds (numbers only; Loom sends images through its own events)."""

    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class PromptServer:
    """The server object packs talk to; one per Loom instance that loads custom nodes."""

    instance: ClassVar[PromptServer]

    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        self.app: web.Application | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.number = 0
        self.supports = ["custom_nodes_from_web"]
        self._sender: _Sender | None = None

    def attach(self, app: web.Application, sender: _Sender) -> None:
        """Serve the packs' routes on ``app`` and send their messages through ``sender`` (the websocket hub)."""
        self.app = app
        self._sender = sender
        app.router.add_routes(self.routes)
        app.on_startup.append(self._started)

    async def _started(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send ``{"type": event, "data": data}`` to client ``sid`` (None: every client), from any thread. A
        binary image event (``BinaryEventTypes``, data ``[format, PIL image, max size]``) goes to the prompt's
        client as the running node's image frame, as ComfyUI sends it."""
        if isinstance(event, int):
            self._send_image(event, data)
            return
        if self._sender is None:
            log.debug("custom node message %s dropped: no server is running", event)
            return
        self._sender.send_message(event, data, sid)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def _send_image(self, event: int, data: Any) -> None:
        ctx = current_run()
        if event not in (BinaryEventTypes.PREVIEW_IMAGE, BinaryEventTypes.UNENCODED_PREVIEW_IMAGE) or ctx is None:
            log.warning("custom node binary message %s dropped: Loom sends only image frames of a running node",
                        event)
            return
        image_format, image = str(data[0]).upper(), data[1]
        if not hasattr(image, "save"):
            log.warning("custom node image frame dropped: expected a PIL image, got %s", type(image).__name__)
            return
        out = io.BytesIO()
        image.save(out, format="JPEG" if image_format == "JPEG" else "PNG")
        ctx.send_image("JPEG" if image_format == "JPEG" else "PNG", out.getvalue())
