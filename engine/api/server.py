"""The aiohttp application, assembled: middlewares, the websocket hub's lifecycle, and every route
of :mod:`engine.api.routes` registered at ``/x`` and ``/api/x``.

Handlers live in the route modules; they never let an exception escape as a bare 500 (see
:mod:`engine.api.errors`). Blocking work runs in the default thread pool.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from engine.api.comfyui_frontend import comfyui_static_root, static_handler
from engine.api.context import ApiContext
from engine.api.errors import error_middleware
from engine.api.hub import Hub
from engine.api.operation import FORM_OVERHEAD, bound, served_paths
from engine.api.routes import ROUTE_CLASSES, operations
from engine.api.security import RedactingAccessLogger, security_headers, security_middlewares
from engine.settings import Settings

if TYPE_CHECKING:
    from engine.queue import PromptQueue
    from engine.registry import NodeRegistry
    from engine.worker import PromptRunner

log = logging.getLogger(__name__)

CONTEXT_KEY = web.AppKey("loom_context", ApiContext)

__all__ = ["CONTEXT_KEY", "bound_port", "create_app", "start_server"]


def _route_pattern(path: str) -> str:
    """aiohttp pattern of a documented path: ``{path}`` and ``{node_class}`` may contain slashes."""
    return path.replace("{path}", "{path:.+}").replace("{node_class}", "{node_class:.+}")


def create_app(
    settings: Settings,
    registry: NodeRegistry,
    queue: PromptQueue,
    worker: PromptRunner,
    hub: Hub,
) -> web.Application:
    """The aiohttp application serving every declared route at ``/x`` and ``/api/x``."""
    ctx = ApiContext(settings, registry, queue, worker, hub, operations())
    chain = [error_middleware(), *security_middlewares(settings)]  # outermost first
    app = web.Application(middlewares=chain, client_max_size=settings.max_upload_bytes + FORM_OVERHEAD)
    app[CONTEXT_KEY] = ctx
    hub.setup(settings, queue)
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.stop)
    app.on_response_prepare.append(security_headers)
    for routes_class in ROUTE_CLASSES:
        for op, handler in bound(routes_class(ctx)):
            for path in served_paths(op):
                if op.method == "GET":  # HEAD too
                    app.router.add_get(_route_pattern(path), handler)
                else:
                    app.router.add_route(op.method, _route_pattern(path), handler)
    if registry.custom_runtime is not None:  # custom node packs' own routes and messages
        registry.custom_runtime.prompt_server.attach(app, hub)
    if settings.frontend == "comfyui":  # after every route: what none of them answers is a static file or a 404
        app.router.add_get("/{tail:.+}", static_handler(comfyui_static_root(settings)))
    return app


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


async def start_server(app: web.Application, settings: Settings) -> web.AppRunner:
    """Bind ``settings.host:settings.port`` (0: a free port) and start serving; returns the runner.

    The bound port is logged as ``Loom listening on http://HOST:PORT`` and available from
    :func:`bound_port` and ``app[CONTEXT_KEY].port``.
    """
    runner = web.AppRunner(app, shutdown_timeout=5.0, access_log_class=RedactingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = bound_port(runner)
    app[CONTEXT_KEY].port = port
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("Loom listening on http://%s:%d", host, port)
    return runner
