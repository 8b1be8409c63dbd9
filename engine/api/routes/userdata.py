"""What ComfyUI's frontend stores on the server: ``/users``, ``/settings`` and ``/userdata`` (ComfyUI's routes
and shapes; the storage is :mod:`engine.userdata`).

The user is ``default`` unless the server runs with ``multi_user``: then the ``Comfy-User`` header names it
(an unknown one gets 403, or 401 on ``/settings`` as ComfyUI answers). A file path is one URL segment,
percent-encoded (``workflows%2Fa.json``); ``..`` and absolute paths get 403, malformed ones (NUL,
backslash, double-encoded) 400, a missing file 404, a taken name without ``overwrite`` 409, a body over
``max_userdata_bytes`` 413. Files are served as attachments (only the user's ``user.css`` inline) so stored
markup never runs in the server's origin.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from engine.api import protocol as p
from engine.api.context import ApiContext, blocking
from engine.api.errors import ApiError
from engine.api.operation import Param, route
from engine.api.request import json_ok, parse_json, parse_model, read_body
from engine.api.routes.files import SAFE_VIEW_TYPES, disposition
from engine.errors import PathOutsideRoot
from engine.userdata import (
    BAD_NAME_ERRNOS,
    USER_CSS,
    AlreadyExists,
    FileTooLarge,
    InvalidPath,
    InvalidUserName,
    SingleUser,
    UnknownUser,
    UserFiles,
)

T = TypeVar("T")

USER_HEADER = "Comfy-User"
_LIMIT = "max_userdata_bytes"
_STR = {"type": "string"}
_BOOL_TEXT = {"type": "string", "enum": ["true", "false"]}
_ANY = {"description": "Any JSON value."}
_FILE_TYPES = ("application/octet-stream", "text/css", *sorted(SAFE_VIEW_TYPES))
_PATH_ERRORS = (400, 403, 404)
_FILE = Param("file", "path", _STR, "File path relative to the user's folder, percent-encoded "
              "('workflows%2Fa.json').", True)
_OVERWRITE = Param("overwrite", "query", _BOOL_TEXT, "'false': refuse (409) when the target exists. Default true.")
_FULL_INFO = Param("full_info", "query", _BOOL_TEXT, "'true': reply the file's info instead of its path.")
_SAVED = {"oneOf": [_STR, p.ref(p.UserFileInfo)]}


def _flag(request: web.Request, name: str, *, default: bool) -> bool:
    """ComfyUI's boolean query values: ``true`` (any case) is true; with a true default only ``false`` is false."""
    value = request.query.get(name)
    if value is None:
        return default
    return value != "false" if default else value.lower() == "true"


class UserDataRoutes:
    """Users, their settings and their files, as ComfyUI's frontend reads and writes them."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.data = ctx.userdata

    # ------------------------------------------------------------------- helpers

    def _user(self, request: web.Request, *, status: int = 403) -> str:
        try:
            return self.data.user_id(request.headers.get(USER_HEADER))
        except UnknownUser as exc:
            raise ApiError(status, "unknown_user", "Unknown user", str(exc)) from exc

    def _files(self, request: web.Request) -> UserFiles:
        return self.data.files(self._user(request))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread pool, its storage errors as API errors."""
        try:
            return await blocking(fn, *args)
        except PathOutsideRoot as exc:
            raise ApiError(403, "forbidden_path", "Path outside the user's folder", str(exc)) from exc
        except InvalidPath as exc:
            raise ApiError(400, "invalid_path", "Invalid path", str(exc)) from exc
        except FileNotFoundError as exc:
            raise ApiError(404, "not_found", "File not found", str(exc)) from exc
        except AlreadyExists as exc:
            raise ApiError(409, "already_exists", "File already exists", str(exc)) from exc
        except FileTooLarge as exc:
            raise ApiError(413, "payload_too_large", "Too large", f"{exc} ({_LIMIT})") from exc
        except OSError as exc:
            if exc.errno not in BAD_NAME_ERRNOS:
                raise
            raise ApiError(400, "invalid_path", "Invalid path",
                           f"{exc.strerror}: a part of the path is a file, a name is too long for the file system, "
                           "or links loop; pick another name") from exc

    def _saved(self, files: UserFiles, path: Path, request: web.Request) -> web.Response:
        full_info = _flag(request, "full_info", default=False)
        return json_ok(files.info(path) if full_info else files.relative(path))

    # ------------------------------------------------------------------- users

    @route("GET", "/users", "The server's users: single-user {storage, migrated}, multi-user {storage, users}.",
           "users", response={"oneOf": [p.ref(p.SingleUserConfig), p.ref(p.MultiUserConfig)]})
    async def get_users(self, request: web.Request) -> web.Response:
        if self.data.multi_user:
            return json_ok({"storage": "server", "users": await blocking(self.data.users)})
        migrated = await blocking(self.data.folder_exists, self._user(request))
        return json_ok({"storage": "server", "migrated": migrated})

    @route("POST", "/users", "Add a user (multi-user servers); replies its new id.", "users", request=p.NewUser,
           request_required=True, response=_STR, errors=(400,),
           error_bodies={400: {"anyOf": [p.ref(p.UserError), p.ref(p.ErrorResponse)]}})
    async def post_users(self, request: web.Request) -> web.Response:
        body = parse_model(p.NewUser, parse_json(await read_body(request, 64 * 1024, "64 KiB"), required=True))
        try:
            return json_ok(await blocking(self.data.add_user, body.username))
        except (InvalidUserName, SingleUser) as exc:
            return json_ok({"error": str(exc)}, status=400)  # ComfyUI's shape: its frontend shows error

    # ------------------------------------------------------------------- settings

    @route("GET", "/settings", "The user's settings (stored values over Loom's defaults).", "settings",
           response={"type": "object"})
    async def get_settings(self, request: web.Request) -> web.Response:
        store = self.data.settings(self._user(request, status=401))
        return json_ok(await self._run(store.all))

    @route("GET", "/settings/{id}", "One setting's value (null when unset).", "settings", response=_ANY,
           params=(Param("id", "path", _STR, "Setting id, e.g. Comfy.Locale.", True),))
    async def get_setting(self, request: web.Request) -> web.Response:
        store = self.data.settings(self._user(request, status=401))
        return json_ok(await self._run(store.get, request.match_info["id"]))

    @route("POST", "/settings", "Merge a JSON object into the user's settings.", "settings",
           request={"type": "object"}, request_required=True, errors=(400,), body_limit=_LIMIT, limits=(_LIMIT,))
    async def post_settings(self, request: web.Request) -> web.Response:
        store = self.data.settings(self._user(request, status=401))
        values = parse_json(await read_body(request, self.data.max_bytes, _LIMIT), required=True)
        if not isinstance(values, dict):
            raise ApiError(400, "invalid_request", "Settings must be a JSON object",
                           f"got a JSON {type(values).__name__}; send {{setting_id: value, ...}}")
        await self._run(store.update, values)
        return web.Response(status=200)

    @route("POST", "/settings/{id}", "Set one setting to the JSON value of the body.", "settings", request=_ANY,
           request_required=True, errors=(400,), body_limit=_LIMIT, limits=(_LIMIT,),
           params=(Param("id", "path", _STR, "Setting id, e.g. Comfy.Locale.", True),))
    async def post_setting(self, request: web.Request) -> web.Response:
        store = self.data.settings(self._user(request, status=401))
        value = parse_json(await read_body(request, self.data.max_bytes, _LIMIT), required=True)
        await self._run(store.update, {request.match_info["id"]: value})
        return web.Response(status=200)

    # ------------------------------------------------------------------- files

    @route("GET", "/userdata", "Files under a folder of the user's: paths, [path, *parts] (split) or file infos "
           "(full_info).", "userdata", errors=_PATH_ERRORS,
           response={"anyOf": [{"type": "array", "items": _STR},
                               {"type": "array", "items": {"type": "array", "items": _STR}},
                               {"type": "array", "items": p.ref(p.UserFileInfo)}]},
           params=(Param("dir", "query", _STR, "Folder relative to the user's folder ('.' for itself).", True),
                   Param("recurse", "query", _BOOL_TEXT, "'true': files of subfolders too."),
                   Param("split", "query", _BOOL_TEXT, "'true': each file as [path, *path.split('/')]."),
                   Param("full_info", "query", _BOOL_TEXT, "'true': each file as {path, size, modified, created}.")))
    async def list_userdata(self, request: web.Request) -> web.Response:
        folder = request.query.get("dir", "")
        if not folder:
            raise ApiError(400, "invalid_request", "Directory not provided", "pass ?dir=FOLDER ('.' for all)")
        files = self._files(request)
        recurse, split = _flag(request, "recurse", default=False), _flag(request, "split", default=False)
        full_info = _flag(request, "full_info", default=False)
        return json_ok(await self._run(
            lambda: files.listing(folder, recurse=recurse, split=split, full_info=full_info)))

    @route("GET", "/v2/userdata", "Every folder and file under a folder of the user's, folders first.", "userdata",
           errors=_PATH_ERRORS, response={"type": "array", "items": p.ref(p.UserDataEntry)},
           params=(Param("path", "query", _STR, "Folder relative to the user's folder (default: itself)."),))
    async def list_userdata_v2(self, request: web.Request) -> web.Response:
        files = self._files(request)
        return json_ok(await self._run(files.tree, request.query.get("path", "")))

    @route("GET", "/userdata/{file}", "A file of the user's, as stored (an attachment; user.css inline).",
           "userdata", errors=_PATH_ERRORS, response={"description": "The file's bytes."},
           response_types=_FILE_TYPES, params=(_FILE,))
    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        files = self._files(request)
        rel = request.match_info["file"]
        path = await self._run(files.existing_file, rel)
        if path == files.real_root / USER_CSS:
            ctype, inline = "text/css", True
        else:
            guessed = mimetypes.guess_type(path.name)[0]
            ctype, inline = (guessed if guessed in SAFE_VIEW_TYPES else "application/octet-stream"), False
        return web.FileResponse(path, headers={
            "Content-Type": ctype, "Content-Disposition": disposition(path.name, inline=inline),
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        })

    @route("POST", "/userdata/{file}", "Store the body as a file of the user's; replies its path or its info.",
           "userdata", request={"type": "string", "format": "binary"}, request_type="application/octet-stream",
           response=_SAVED, errors=(*_PATH_ERRORS, 409), body_limit=_LIMIT, limits=(_LIMIT,),
           params=(_FILE, _OVERWRITE, _FULL_INFO))
    async def post_userdata(self, request: web.Request) -> web.Response:
        files = self._files(request)
        data = await read_body(request, self.data.max_bytes, _LIMIT)
        overwrite = _flag(request, "overwrite", default=True)
        path = await self._run(lambda: files.write(request.match_info["file"], data, overwrite=overwrite))
        return self._saved(files, path, request)

    @route("DELETE", "/userdata/{file}", "Delete a file of the user's.", "userdata", status=204,
           response_description="Deleted", errors=_PATH_ERRORS, params=(_FILE,))
    async def delete_userdata(self, request: web.Request) -> web.Response:
        files = self._files(request)
        await self._run(files.delete, request.match_info["file"])
        return web.Response(status=204)

    @route("POST", "/userdata/{file}/move/{dest}", "Move or rename a file of the user's; replies the new path or "
           "its info.", "userdata", response=_SAVED, errors=(*_PATH_ERRORS, 409),
           params=(_FILE, Param("dest", "path", _STR, "The new path, percent-encoded.", True), _OVERWRITE,
                   _FULL_INFO))
    async def move_userdata(self, request: web.Request) -> web.Response:
        files = self._files(request)
        source, dest = request.match_info["file"], request.match_info["dest"]
        overwrite = _flag(request, "overwrite", default=True)
        path = await self._run(lambda: files.move(source, dest, overwrite=overwrite))
        return self._saved(files, path, request)
