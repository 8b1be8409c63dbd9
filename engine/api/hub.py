"""The websocket hub: connected clients, and the bridge from the worker thread to their sockets.

Threads: the executor runs on a worker thread and calls ``sink.emit(event)``; the hub hands the
event to the asyncio loop with ``loop.call_soon_threadsafe`` and returns at once, so the worker never
waits for a socket. On the loop, each connection has its own outbox and sender task: a slow or dead
socket only fills its own outbox (and is dropped when that overflows), never delays the others.

Routing follows ComfyUI: an event goes to the websocket of the prompt's ``client_id``, or to every
client when the prompt has none; ``execution_interrupted`` and queue ``status`` changes go to
everyone. Text frames are compact JSON. Preview images are binary frames, sent only when the
server has previews enabled and the client opted in (``supports_preview_metadata`` in its
``feature_flags`` message: type-4 frames; ``?previews=1`` or ``previews: true``: type-1 frames).
Images a node sends to its client (SaveImageWebsocket) use the same frames but always go out:
type 4 to clients that negotiated preview metadata, type 1 to every other.

A client that reconnects with the same ``clientId`` replaces its old socket (the old socket is left
open but receives nothing more, so two tabs that share an id do not fight in a reconnect loop), and
is told which node of its running prompt is executing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import struct
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from engine.events import Event, Executing, ExecutionStart, PreviewImage, WebsocketImage, to_message
from engine.jsonutil import dumps_compact
from engine.queue import QueueClosed

if TYPE_CHECKING:
    from engine.queue import PromptQueue
    from engine.settings import Settings

log = logging.getLogger(__name__)

#: Frames and bytes a connection may have waiting before it is considered stuck and dropped.
OUTBOX_LIMIT = 10_000
OUTBOX_BYTES = 32 * 1024 * 1024
#: Binary frame event types (ComfyUI's protocol).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_TYPES = {"jpeg": 1, "jpg": 1, "image/jpeg": 1, "png": 2, "image/png": 2}
_MAX_CLIENT_ID = 256
_MAX_TRACKED_PROMPTS = 256


def dumps(message: Any) -> str:
    """Compact JSON, as every text frame is sent (no spaces: bytes per node matter)."""
    return dumps_compact(message)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


class _Connection:
    """One websocket and its outbox. All methods run on the event loop."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, client_id: str, *,
                 previews: bool, max_bytes: int) -> None:
        self.ws = ws
        self.client_id = client_id
        self.previews = previews
        self.preview_metadata = False
        self.greeted = False
        self.dead = False
        self._request = request
        self._max_bytes = max_bytes
        self._pending_bytes = 0
        self._outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    def send(self, payload: str | bytes) -> None:
        """Queue a frame; never waits. A client that lets too much pile up is dropped."""
        if self.dead:
            return
        size = len(payload)
        if self._pending_bytes + size > self._max_bytes or self._outbox.full():
            log.warning("websocket client %s is not reading (%d frames, %d bytes waiting); dropping it",
                        self.client_id, self._outbox.qsize(), self._pending_bytes)
            self.abort()
            return
        self._pending_bytes += size
        self._outbox.put_nowait(payload)

    def abort(self) -> None:
        """Drop a stuck client: stop sending, try a close frame briefly, then cut the connection."""
        self.dead = True
        if self._sender is not None:
            self._sender.cancel()
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(
                self.close(WSCloseCode.TRY_AGAIN_LATER, b"client too slow"))

    async def close(self, code: int, message: bytes) -> None:
        """Send a close frame (waiting at most a second), then make sure the connection is gone."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), timeout=1.0)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("closing websocket client %s: %s", self.client_id, exc)
        transport = self._request.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def _send_loop(self) -> None:
        try:
            while True:
                payload = await self._outbox.get()
                if payload is None:
                    return
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_str(payload)
                self._pending_bytes -= len(payload)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("websocket client %s went away: %s", self.client_id, exc)
            self.dead = True

    async def stop(self) -> None:
        """Let queued frames go out (briefly), then end the sender."""
        self.dead = True
        if self._sender is None or self._sender.done():
            return
        try:
            self._outbox.put_nowait(None)
        except asyncio.QueueFull:
            self._sender.cancel()
        try:
            await asyncio.wait_for(self._sender, timeout=2.0)
        except (TimeoutError, asyncio.CancelledError):
            self._sender.cancel()


class _ClientSink:
    """The EventSink of one prompt: events go to its client (or everyone when it has none)."""

    def __init__(self, hub: Hub, client_id: str | None) -> None:
        self._hub = hub
        self._client_id = client_id

    def emit(self, event: Event) -> None:
        self._hub.emit(event, self._client_id)


class Hub:
    """Connected websocket clients, keyed by clientId; thread-safe event intake.

    Wiring: ``hub = Hub()``; ``PromptWorker(queue, executor, hub.sink_for)``;
    ``create_app(..., hub=hub)`` calls :meth:`setup` and attaches :meth:`start` / :meth:`stop` to
    the app's startup and shutdown.
    """

    def __init__(self, *, outbox_bytes: int = OUTBOX_BYTES) -> None:
        self._outbox_bytes = outbox_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: PromptQueue | None = None
        self._flags: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": 0}
        self._previews_enabled = False
        self._clients: dict[str, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._running: dict[str, list[str | None]] = {}  # prompt_id -> [client_id, last node]
        self._listening = False

    # ------------------------------------------------------------------ wiring

    def setup(self, settings: Settings, queue: PromptQueue) -> None:
        """Take the server's settings and queue (called by create_app)."""
        self._queue = queue
        self._flags = {"supports_preview_metadata": True, "max_upload_size": settings.max_upload_bytes}
        self._previews_enabled = settings.preview_method != "none"

    @property
    def feature_flags(self) -> dict[str, Any]:
        return dict(self._flags)

    async def start(self, app: web.Application | None = None) -> None:
        """Attach to the running loop (app startup) and follow queue changes."""
        self._loop = asyncio.get_running_loop()
        if self._queue is not None and not self._listening:
            self._queue.add_listener(self._on_queue_change)
            self._listening = True

    async def stop(self, app: web.Application | None = None) -> None:
        """Close every socket (app shutdown); later events are dropped."""
        self._loop = None
        connections = list(self._connections)
        self._clients.clear()

        async def close(conn: _Connection) -> None:
            await conn.stop()
            await conn.close(WSCloseCode.GOING_AWAY, b"server shutting down")

        await asyncio.gather(*(close(conn) for conn in connections))

    # ------------------------------------------------------------------ intake (any thread)

    def sink_for(self, client_id: str | None) -> _ClientSink:
        """The EventSink for a prompt submitted by ``client_id`` (None: broadcast)."""
        return _ClientSink(self, client_id)

    def emit(self, event: Event, client_id: str | None = None) -> None:
        """Hand an event to the loop; returns immediately, from any thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, event, client_id)
        except RuntimeError:  # the loop closed under us: the server is gone
            log.debug("dropping %s: the event loop is closed", event.type)

    def send_message(self, message_type: str, data: Any, client_id: str | None = None) -> None:
        """Send ``{"type", "data"}`` to one client (None: every client), from any thread: what custom nodes
        send with ``PromptServer.instance.send_sync``."""
        loop = self._loop
        if loop is None:
            return
        payload = dumps({"type": message_type, "data": data})
        try:
            loop.call_soon_threadsafe(self._send_text, payload, client_id)
        except RuntimeError:
            log.debug("dropping a %s message: the event loop is closed", message_type)

    def _send_text(self, payload: str, client_id: str | None) -> None:
        if client_id is None:
            self._broadcast(payload)
            return
        conn = self._clients.get(client_id)
        if conn is not None:
            conn.send(payload)

    def _on_queue_change(self) -> None:
        """Queue listener (any thread): read the count now, broadcast it in order with the events."""
        loop = self._loop
        if loop is None:
            return
        message = self.status_message()
        try:
            loop.call_soon_threadsafe(self._broadcast_status, message)
        except RuntimeError:
            log.debug("dropping a status broadcast: the event loop is closed")

    # ------------------------------------------------------------------ delivery (loop)

    @property
    def client_count(self) -> int:
        return sum(1 for conn in self._clients.values() if not conn.dead)

    def is_connected(self, client_id: str) -> bool:
        """True while the client's socket gets messages: a dropped client counts as gone at once, even
        while its socket is still being torn down."""
        conn = self._clients.get(client_id)
        return conn is not None and not conn.dead

    def queue_remaining(self) -> int:
        if self._queue is None:
            return 0
        try:
            return self._queue.remaining()
        except (QueueClosed, sqlite3.Error) as exc:  # a closed queue during shutdown
            log.debug("queue unavailable for status: %s", exc)
            return 0

    def status_message(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    def _broadcast_status(self, message: dict[str, Any]) -> None:
        if self._clients:
            self._broadcast(dumps(message))

    def _broadcast(self, payload: str | bytes) -> None:
        for conn in list(self._clients.values()):
            conn.send(payload)

    def _deliver(self, event: Event, client_id: str | None) -> None:
        self._track(event, client_id)
        if isinstance(event, PreviewImage):
            self._deliver_preview(event, client_id)
            return
        if isinstance(event, WebsocketImage):
            self._deliver_image(event, client_id)
            return
        if client_id is None or event.type == "execution_interrupted":
            if self._clients:
                self._broadcast(dumps(to_message(event)))
            return
        conn = self._clients.get(client_id)
        if conn is not None:
            conn.send(dumps(to_message(event)))

    def _track(self, event: Event, client_id: str | None) -> None:
        """Remember each running prompt's client and current node, for reconnects."""
        if isinstance(event, ExecutionStart):
            if len(self._running) >= _MAX_TRACKED_PROMPTS:
                self._running.pop(next(iter(self._running)))
            self._running[event.prompt_id] = [client_id, None]
        elif isinstance(event, Executing):
            if event.node is None:
                self._running.pop(event.prompt_id, None)
            else:
                self._running.setdefault(event.prompt_id, [client_id, None])[1] = event.node

    def _targets(self, client_id: str | None) -> list[_Connection]:
        """The prompt's client, or every client when the prompt has none."""
        if client_id is None:
            return list(self._clients.values())
        conn = self._clients.get(client_id)
        return [conn] if conn is not None else []

    def _deliver_preview(self, event: PreviewImage, client_id: str | None) -> None:
        if self._previews_enabled:
            self._send_image(event, self._targets(client_id), always=False)

    def _deliver_image(self, event: WebsocketImage, client_id: str | None) -> None:
        """A node's image for its client: sent whether or not the client asked for previews."""
        self._send_image(event, self._targets(client_id), always=True)

    def _send_image(self, event: PreviewImage | WebsocketImage, targets: list[_Connection], *, always: bool) -> None:
        """Type-4 frames to clients that negotiated preview metadata, type-1 frames to the others
        (to those that asked for previews, or to all when ``always``)."""
        image_type = _IMAGE_TYPES.get(event.image_format.lower())
        if image_type is None:
            log.debug("%s in unsupported format %r dropped", event.type, event.image_format)
            return
        plain: bytes | None = None
        with_meta: bytes | None = None
        for conn in targets:
            if conn.preview_metadata:
                with_meta = with_meta or _preview_with_metadata(event, image_type)
                conn.send(with_meta)
            elif always or conn.previews:
                plain = plain or struct.pack(">II", PREVIEW_IMAGE, image_type) + event.data
                conn.send(plain)

    # ------------------------------------------------------------------ the /ws handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /ws?clientId=``: register the socket, greet it, read its (optional) first message."""
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        if len(client_id) > _MAX_CLIENT_ID:
            raise web.HTTPBadRequest(reason="clientId is too long")
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Connection(ws, request, client_id, previews=_truthy(request.query.get("previews")),
                           max_bytes=self._outbox_bytes)
        old = self._clients.get(client_id)
        if old is not None:
            log.info("websocket client %s reconnected; the old socket gets no more messages", client_id)
        self._clients[client_id] = conn
        self._connections.add(conn)
        conn.start()
        conn.send(dumps(self.status_message(sid=client_id)))
        for prompt_id, (owner, node) in self._running.items():
            if owner == client_id and node is not None:
                conn.send(dumps(to_message(Executing(node, node, prompt_id))))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_client_text(conn, msg.data)
        finally:
            if self._clients.get(client_id) is conn:
                del self._clients[client_id]
            self._connections.discard(conn)
            await conn.stop()
        return ws

    def _on_client_text(self, conn: _Connection, text: str) -> None:
        """Only the first message counts, and only a ``feature_flags`` one; the rest is ignored."""
        if conn.greeted:
            return
        conn.greeted = True
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit: ignored
            return
        if not isinstance(message, dict) or message.get("type") != "feature_flags":
            return
        data = message.get("data")
        if isinstance(data, dict):
            conn.preview_metadata = data.get("supports_preview_metadata") is True
            conn.previews = conn.previews or data.get("previews") is True
        conn.send(dumps({"type": "feature_flags", "data": self.feature_flags}))


def _preview_with_metadata(event: PreviewImage | WebsocketImage, image_type: int) -> bytes:
    meta = dumps({
        "node_id": event.node, "prompt_id": event.prompt_id, "display_node_id": event.node,
        "parent_node_id": None, "real_node_id": event.node,
        "image_type": "image/jpeg" if image_type == 1 else "image/png",
    }).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + event.data
