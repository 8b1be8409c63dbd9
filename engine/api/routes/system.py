"""Nodes, models and the system: ``/object_info``, ``/models``, ``/embeddings``, ``/system_stats``,
``/features``, ``/extensions`` and ``/openapi.json``. None of them imports torch."""

from __future__ import annotations

from aiohttp import web

from engine.api import protocol as p
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.openapi import build_document
from engine.api.operation import Param, route
from engine.api.request import json_ok
from engine.api.system_info import LOOM_VERSION, system_stats
from engine.folders import MODEL_FOLDERS
from engine.jsonutil import dumps_compact

#: Model folders ComfyUI clients ask for beyond the ones Loom loads from, with their file endings.
EXTRA_MODEL_FOLDERS: dict[str, tuple[str, ...]] = {"configs": (".yaml", ".yml", ".json")}

_STR = {"type": "string"}
_STR_LIST = {"type": "array", "items": _STR}


class SystemRoutes:
    """What the server offers: node classes, model files, devices, flags, its own API document."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._openapi: str | None = None

    @route("GET", "/object_info", "Every node class's schema.", "nodes", response=p.NODE_INFO_MAP)
    async def object_info(self, request: web.Request) -> web.Response:
        return json_ok(await blocking(self.ctx.registry.object_info, self.ctx.folders))

    @route("GET", "/object_info/{node_class}", "One node class's schema ({} when unknown).", "nodes",
           response=p.NODE_INFO_MAP, params=(Param("node_class", "path", _STR, required=True),))
    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        cls = self.ctx.registry.get(name)
        if cls is None:
            return json_ok({})
        return json_ok({name: await blocking(self.ctx.registry.node_info, cls, self.ctx.folders)})

    @route("GET", "/system_stats", "System, Python, torch and device information.", "system",
           response=p.SystemStats)
    async def system_stats(self, request: web.Request) -> web.Response:
        stats = await blocking(system_stats, self.ctx.settings)
        loom = await blocking(self.ctx.worker.stats)  # this process's cache and models (none on a cluster front)
        workers = self.ctx.worker.describe()
        if workers is not None:  # a cluster front: its workers
            loom["workers"] = workers
        if loom:
            stats["loom"] = loom
        return json_ok(stats)

    @route("GET", "/embeddings", "Embedding names (extension stripped).", "models", response=_STR_LIST)
    async def embeddings(self, request: web.Request) -> web.Response:
        return json_ok(await blocking(self.ctx.folders.embedding_names))

    @route("GET", "/models", "Model folder names.", "models", response=_STR_LIST)
    async def model_folders(self, request: web.Request) -> web.Response:
        return json_ok([*MODEL_FOLDERS, *EXTRA_MODEL_FOLDERS])

    @route("GET", "/models/{folder}", "Model files in a folder.", "models", response=_STR_LIST, errors=(404,),
           params=(Param("folder", "path", _STR, required=True),))
    async def models_in_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder in EXTRA_MODEL_FOLDERS:
            return json_ok(await blocking(self.ctx.folders.list_models, folder, EXTRA_MODEL_FOLDERS[folder]))
        if folder not in MODEL_FOLDERS:
            raise ApiError(404, "unknown_folder", "Unknown model folder",
                           f"{folder!r} is not one of {', '.join([*MODEL_FOLDERS, *EXTRA_MODEL_FOLDERS])}")
        return json_ok(await blocking(self.ctx.folders.list_models, folder))

    @route("GET", "/features", "Server feature flags.", "system", response=p.FeatureFlags)
    async def features(self, request: web.Request) -> web.Response:
        return json_ok(self.ctx.hub.feature_flags)

    @route("GET", "/openapi.json", "This document.", "system", response={"type": "object"})
    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = dumps_compact(build_document(LOOM_VERSION, self.ctx.operations, self.ctx.settings))
        return web.Response(text=self._openapi, content_type="application/json")
