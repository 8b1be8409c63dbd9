"""What ComfyUI's frontend keeps on the server: users, their settings and their files.

The layout is ComfyUI's ``user`` folder (:attr:`engine.settings.Settings.user_dir`):

* ``USER_DIR/default/``: the one user of a single-user server (the default);
* ``USER_DIR/users.json``: ``{user_id: name}`` of a multi-user server (``Settings.multi_user``), and
  ``USER_DIR/<user_id>/`` for each;
* ``<user folder>/comfy.settings.json``: the user's settings, one JSON object;
* anything else in a user folder is that user's data (``workflows/*.json``, ``user.css``, ...).

Every requested path stays inside its user's folder: ``..`` and absolute paths raise
:class:`~engine.errors.PathOutsideRoot`, as does a symlink that leads out; NUL bytes, backslashes and
percent-encoded separators raise :class:`InvalidPath`. Files are written atomically (a reader sees the
old file or the new one) and bounded in size. Multi-user mode picks the user from a request header:
it separates people who share a server, it does not authenticate them. No torch here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from engine.errors import LoomError, PathOutsideRoot
from engine.files import NoFreeName, save_free, write_atomic
from engine.folders import path_problem, resolve_inside

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
#: Users whose id starts with this are the server's own (ComfyUI's system users): never reachable by request.
SYSTEM_USER_PREFIX = "__"
USERS_FILE = "users.json"
SETTINGS_FILE = "comfy.settings.json"
#: The one file of a user folder served inline as a stylesheet (ComfyUI's custom CSS); every other file
#: is served as an attachment.
USER_CSS = "user.css"
#: Settings every user starts with; stored values override them. ComfyUI's frontend fetches release notes
#: and "what's new" announcements from api.comfy.org while this one is on (its default): Loom's server
#: contacts no outside host, and its frontend should not either unless the user turns it back on.
DEFAULT_SETTINGS: Mapping[str, Any] = {"Comfy.Notification.ShowVersionUpdates": False}
#: A user id that may name a folder: ComfyUI makes ids of these characters (plus a uuid).
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]+")
MAX_USERNAME_CHARS = 100
#: OSErrors that come from the requested name, not from the server: a folder part that is a file, a folder
#: where the file goes, a name too long for the file system, a loop of links.
BAD_NAME_ERRNOS = frozenset({errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})


class UserDataError(LoomError):
    """A request about user data that cannot be served as asked; the message says why."""


class UnknownUser(UserDataError):
    """The request names no user of this server (or a system user)."""


class InvalidUserName(UserDataError):
    """A new user's name breaks the rules (empty, taken, a system prefix, too long)."""


class SingleUser(UserDataError):
    """Users can only be added to a multi-user server."""


class InvalidPath(UserDataError):
    """A requested path is malformed: NUL bytes, backslashes, percent-encoded separators, a folder or a name
    the file system refuses."""


class FileTooLarge(UserDataError):
    """The data is larger than the user data limit."""


class AlreadyExists(UserDataError):
    """The target file exists and overwriting was not asked for."""


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    """ComfyUI's file info: ``{path, size, modified, created}``, times in integer milliseconds."""
    stat = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
            "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}


def _segments(rel: str) -> list[str]:
    """The path pieces of a checked request path (``.`` and empty pieces dropped)."""
    return [seg for seg in rel.split("/") if seg and seg != "."]


def check_request_path(rel: str) -> None:
    """Refuse a path from a request: InvalidPath (malformed) or PathOutsideRoot (``..``, absolute)."""
    if "\x00" in rel:
        raise InvalidPath(f"path {rel!r} contains a NUL byte")
    problem = path_problem(rel)
    if problem is not None:
        raise PathOutsideRoot(f"path {rel!r} {problem}")
    problem = path_problem(rel, from_request=True)
    if problem is not None:
        raise InvalidPath(f"path {rel!r} {problem}")


class UserFiles:
    """The files of one user folder; every path is relative to it and stays inside it."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    @property
    def real_root(self) -> Path:
        return self.root.resolve()

    def path(self, rel: str) -> Path:
        """Where ``rel`` lives: its folder resolved (links included) inside the root, its last piece kept as
        named, so a link is read through but deleted or moved itself. A link that leads out raises
        PathOutsideRoot."""
        check_request_path(rel)
        *folders, name = _segments(rel) or [""]
        directory = resolve_inside(self.root, "/".join(folders))
        if not name:
            return directory
        path = directory / name
        if path.is_symlink():
            resolve_inside(self.root, path.relative_to(self.real_root).as_posix())
        return path

    def folder(self, rel: str) -> Path:
        """An existing folder inside the root (``rel`` empty: the root); FileNotFoundError otherwise."""
        check_request_path(rel)
        path = resolve_inside(self.root, rel)
        if not path.is_dir():
            raise FileNotFoundError(f"folder {rel or '.'!r} does not exist")
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.real_root).as_posix()

    def info(self, path: Path) -> dict[str, Any]:
        return file_info(path, self.real_root)

    def existing_file(self, rel: str) -> Path:
        """The file ``rel`` (read through a link that stays inside); FileNotFoundError if it is none."""
        path = self.path(rel)
        if not path.is_file():
            raise FileNotFoundError(f"file {rel!r} does not exist")
        return path

    def write(self, rel: str, data: bytes, *, overwrite: bool) -> Path:
        """Write ``data`` as ``rel`` (folders made as needed), atomically; AlreadyExists when the file is there
        and ``overwrite`` is false (checked and claimed in one step)."""
        if len(data) > self.max_bytes:
            raise FileTooLarge(f"{len(data)} bytes is more than the limit of {self.max_bytes} bytes")
        path = self.path(rel)
        if path == self.real_root or path.is_dir():
            raise InvalidPath(f"{rel!r} is a folder; name a file")
        try:
            if overwrite:
                write_atomic(path, data)
            else:
                save_free(path, data, names=_only_itself, reuse_same=False)
        except NoFreeName as exc:
            raise AlreadyExists(f"{rel!r} already exists; pass overwrite=true to replace it") from exc
        except OSError as exc:
            raise _bad_name(rel, exc) from exc
        return path

    def delete(self, rel: str) -> None:
        path = self.path(rel)
        if path.is_symlink() or path.is_file():
            path.unlink()
            return
        raise FileNotFoundError(f"file {rel!r} does not exist")

    def move(self, source_rel: str, dest_rel: str, *, overwrite: bool) -> Path:
        """Move or rename a file inside the root; FileNotFoundError without the source, AlreadyExists when
        the destination is taken and ``overwrite`` is false."""
        source = self.path(source_rel)
        if not (source.is_symlink() or source.is_file()):
            raise FileNotFoundError(f"file {source_rel!r} does not exist")
        dest = self.path(dest_rel)
        if dest == source:
            return dest
        if dest == self.real_root or (dest.is_dir() and not dest.is_symlink()):
            raise InvalidPath(f"{dest_rel!r} is a folder; name the file to move to")
        if not overwrite and (dest.exists() or dest.is_symlink()):
            raise AlreadyExists(f"{dest_rel!r} already exists; pass overwrite=true to replace it")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(source, dest)  # another file system mounted below the root
        except OSError as exc:
            raise _bad_name(dest_rel, exc) from exc
        return dest

    def listing(self, rel: str, *, recurse: bool, split: bool, full_info: bool) -> list[Any]:
        """ComfyUI's ``GET /userdata``: the files under folder ``rel`` relative to it, as paths, as
        ``[path, *pieces]`` (``split``), or as file infos (``full_info``), sorted."""
        folder = self.folder(rel)
        found = sorted(self._files(folder, recurse), key=lambda p: p.relative_to(folder).as_posix())
        if full_info:
            return [file_info(path, folder) for path in found]
        names = [path.relative_to(folder).as_posix() for path in found]
        return [[name, *name.split("/")] for name in names] if split else names

    def tree(self, rel: str) -> list[dict[str, Any]]:
        """ComfyUI's ``GET /v2/userdata``: every folder and file under ``rel`` (recursively), each
        ``{name, path, type}`` (files also ``size`` and ``modified`` in seconds), paths relative to the root,
        folders first, then by name. The root itself may not exist yet (no entries); a file is InvalidPath."""
        check_request_path(rel)
        if not _segments(rel) and not self.root.is_dir():
            return []
        folder = resolve_inside(self.root, rel)
        if folder.exists() and not folder.is_dir():
            raise InvalidPath(f"{rel!r} is a file, not a folder")
        folder = self.folder(rel)
        root = self.real_root
        entries: list[dict[str, Any]] = []
        for path, is_dir in self._entries(folder, recurse=True):
            entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(root).as_posix(),
                                     "type": "directory" if is_dir else "file"}
            if not is_dir:
                stat = path.stat()
                entry.update(size=stat.st_size, modified=stat.st_mtime)
            entries.append(entry)
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower(), e["path"]))
        return entries

    def _files(self, folder: Path, recurse: bool) -> Iterator[Path]:
        return (path for path, is_dir in self._entries(folder, recurse) if not is_dir)

    def _entries(self, folder: Path, recurse: bool) -> Iterator[tuple[Path, bool]]:
        """(path, is a folder) under ``folder``; hidden names (and Loom's temporary files) skipped, links
        listed only when they resolve inside the root, and never descended into."""
        root = self.real_root
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in dirnames:
                path = here / name
                if _inside(path, root):
                    yield path, True
            for name in sorted(filenames):
                path = here / name
                if not name.startswith(".") and _inside(path, root) and path.is_file():
                    yield path, False
            if not recurse:
                return


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (a link: its target) is inside ``root``."""
    if not path.is_symlink():
        return True
    real = path.resolve()
    return real == root or root in real.parents


def _only_itself(name: str) -> Iterator[str]:
    yield name


def _bad_name(rel: str, exc: OSError) -> Exception:
    """InvalidPath for a write the requested name made fail; the OSError itself for anything else."""
    if exc.errno in BAD_NAME_ERRNOS:
        return InvalidPath(f"{rel!r} cannot be written: {exc.strerror}; a part of its folder is a file, or a "
                           "name is too long for the file system")
    return exc


class SettingsStore:
    """One user's ``comfy.settings.json``: a JSON object, shown over :data:`DEFAULT_SETTINGS`.

    Stored values override the defaults; only what was posted is stored. A file that is not a JSON object
    reads as no stored settings (logged), and is kept beside as ``comfy.settings.json.corrupt-TIME`` when
    settings are next saved, instead of being lost.
    """

    def __init__(self, files: UserFiles, defaults: Mapping[str, Any], lock: threading.Lock) -> None:
        self.files = files
        self.defaults = defaults
        self.lock = lock

    @property
    def path(self) -> Path:
        return self.files.root / SETTINGS_FILE

    def all(self) -> dict[str, Any]:
        stored, _ = self._load()
        return {**self.defaults, **stored}

    def get(self, setting_id: str) -> Any:
        return self.all().get(setting_id)

    def update(self, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into the stored settings."""
        with self.lock:
            stored, corrupt = self._load()
            self._save({**stored, **values}, corrupt)

    def _load(self) -> tuple[dict[str, Any], bool]:
        """(stored settings, whether the file is there but unreadable)."""
        try:
            value = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}, False
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("user settings %s are unreadable (%s); using the defaults", self.path, exc)
            return {}, True
        if not isinstance(value, dict):
            log.warning("user settings %s hold a JSON %s, not an object; using the defaults",
                        self.path, type(value).__name__)
            return {}, True
        return value, False

    def _save(self, settings: dict[str, Any], corrupt: bool) -> None:
        text = json.dumps(settings, indent=4)
        if len(text) > self.files.max_bytes:
            raise FileTooLarge(f"the settings would take {len(text)} bytes; the limit is {self.files.max_bytes}")
        if corrupt:
            kept = self.path.with_name(f"{SETTINGS_FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, kept)
            log.warning("kept the unreadable user settings as %s", kept)
        write_atomic(self.path, text.encode())


class UserData:
    """Users, settings and files of one Loom instance (see the module doc). Thread-safe."""

    def __init__(self, user_dir: Path, *, multi_user: bool, max_bytes: int,
                 defaults: Mapping[str, Any] = DEFAULT_SETTINGS) -> None:
        self.user_dir = user_dir
        self.multi_user = multi_user
        self.max_bytes = max_bytes
        self.defaults = dict(defaults)
        self._lock = threading.Lock()
        self._users: dict[str, str] | None = None

    # ----------------------------------------------------------------------- users

    @property
    def users_path(self) -> Path:
        return self.user_dir / USERS_FILE

    def users(self) -> dict[str, str]:
        """``{user_id: name}``: the users file of a multi-user server, ``{"default": "default"}`` otherwise."""
        if not self.multi_user:
            return {DEFAULT_USER: DEFAULT_USER}
        with self._lock:
            return dict(self._loaded_users())

    def _loaded_users(self) -> dict[str, str]:
        if self._users is None:
            self._users = self._read_users()
        return self._users

    def _read_users(self) -> dict[str, str]:
        try:
            value = json.loads(self.users_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            raise UserDataError(f"the users file {self.users_path} is unreadable ({exc}); fix or remove it") from exc
        if not isinstance(value, dict):
            raise UserDataError(f"the users file {self.users_path} is not a JSON object; fix or remove it")
        users: dict[str, str] = {}
        for user_id, name in value.items():
            if _USER_ID.match(user_id) and not user_id.startswith(SYSTEM_USER_PREFIX):
                users[user_id] = str(name)
            else:
                log.warning("ignoring user %r of %s: not a usable user id", user_id, self.users_path)
        return users

    def user_id(self, header: str | None) -> str:
        """The user a request acts for: its ``Comfy-User`` header on a multi-user server (absent or empty:
        ``default``), always ``default`` otherwise; UnknownUser when there is no such user."""
        user = header.strip() if self.multi_user and header and header.strip() else DEFAULT_USER
        if user.startswith(SYSTEM_USER_PREFIX) or user not in self.users():
            raise UnknownUser(f"unknown user {user[:100]!r}: pick a user of this server (GET /users) and send "
                              "its id as the Comfy-User header")
        return user

    def add_user(self, name: str) -> str:
        """Add a user named ``name`` (ComfyUI's rules) and return its new id: the name with every run of
        characters other than letters, digits, ``-`` and ``_`` replaced by ``-``, then ``_`` and a uuid4."""
        if not self.multi_user:
            raise SingleUser("this server has a single user; start it with --multi-user to add users")
        with self._lock:
            users = self._loaded_users()
            if name in users.values():
                raise InvalidUserName("Duplicate username.")
            name = name.strip()
            if not name:
                raise InvalidUserName("username not provided")
            if len(name) > MAX_USERNAME_CHARS:
                raise InvalidUserName(f"username is longer than {MAX_USERNAME_CHARS} characters")
            slug = _NAME_CHARS.sub("-", name)
            if name.startswith(SYSTEM_USER_PREFIX) or slug.startswith(SYSTEM_USER_PREFIX):
                raise InvalidUserName("System User prefix not allowed")
            user_id = f"{slug}_{uuid.uuid4()}"
            updated = {**users, user_id: name}
            write_atomic(self.users_path, json.dumps(updated).encode())
            self._users = updated
        return user_id

    def folder_exists(self, user_id: str) -> bool:
        return self.folder(user_id).is_dir()

    # ----------------------------------------------------------------------- per user

    def folder(self, user_id: str) -> Path:
        if not _USER_ID.match(user_id):
            raise UnknownUser(f"unknown user {user_id[:100]!r}")
        return self.user_dir / user_id

    def files(self, user_id: str) -> UserFiles:
        return UserFiles(self.folder(user_id), self.max_bytes)

    def settings(self, user_id: str) -> SettingsStore:
        return SettingsStore(self.files(user_id), self.defaults, self._lock)
