"""Loom's network layer: the ComfyUI-compatible HTTP + websocket API (the only network code).

``create_app`` builds the aiohttp application from the route modules of ``engine.api.routes``,
``start_server`` binds it, ``Hub`` is the websocket hub whose ``sink_for(client_id)`` the worker
emits events to.
"""

from engine.api.hub import Hub
from engine.api.server import bound_port, create_app, start_server

__all__ = ["Hub", "bound_port", "create_app", "start_server"]
