"""The HTTP routes, one class per concern; each handler declares its route with ``@route``.

``prompt``: prompts, queue, history, interrupt, free and the websocket. ``jobs``: ComfyUI's jobs API over
the queue and history. ``files``: /view and
uploads. ``system``: node classes, models, system stats, flags and /openapi.json. ``userdata``: the
users, settings and files ComfyUI's frontend stores. ``editor``: the editor's static files and its
/loom/* helpers. ``comfyui``: what ComfyUI's own frontend reads besides those. ``custom_nodes``: custom
node packs' reports and frontend extensions.
"""

from __future__ import annotations

from engine.api.operation import Operation, declared
from engine.api.routes.comfyui import ComfyFrontendRoutes
from engine.api.routes.custom_nodes import CustomNodeRoutes
from engine.api.routes.editor import EditorRoutes
from engine.api.routes.files import FileRoutes
from engine.api.routes.jobs import JobRoutes
from engine.api.routes.prompt import PromptRoutes
from engine.api.routes.system import SystemRoutes
from engine.api.routes.userdata import UserDataRoutes

#: Every route class, in the order the OpenAPI document lists their routes.
ROUTE_CLASSES: tuple[type, ...] = (PromptRoutes, JobRoutes, FileRoutes, SystemRoutes, UserDataRoutes, EditorRoutes,
                                   ComfyFrontendRoutes, CustomNodeRoutes)


def operations() -> tuple[Operation, ...]:
    """Every route the server serves, as declared on the route classes."""
    return tuple(op for cls in ROUTE_CLASSES for op in declared(cls))


__all__ = [
    "ROUTE_CLASSES", "ComfyFrontendRoutes", "CustomNodeRoutes", "EditorRoutes", "FileRoutes", "JobRoutes",
    "PromptRoutes", "SystemRoutes", "UserDataRoutes", "operations",
]
