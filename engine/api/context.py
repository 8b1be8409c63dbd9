"""What the route handlers share: one Loom instance's engine objects, and a way to run blocking work."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engine.files import FileStore
from engine.folders import Folders
from engine.userdata import UserData

if TYPE_CHECKING:
    from engine.api.hub import Hub
    from engine.api.operation import Operation
    from engine.queue import PromptQueue
    from engine.registry import NodeRegistry
    from engine.settings import Settings
    from engine.worker import PromptRunner

T = TypeVar("T")


@dataclass
class ApiContext:
    """The engine objects behind the routes. ``operations`` is every served route (for /openapi.json)."""

    settings: Settings
    registry: NodeRegistry
    queue: PromptQueue
    worker: PromptRunner
    hub: Hub
    operations: tuple[Operation, ...] = ()
    port: int | None = None
    folders: Folders = field(init=False)
    store: FileStore = field(init=False)
    userdata: UserData = field(init=False)

    def __post_init__(self) -> None:
        self.folders = self.settings.folders()
        self.store = FileStore(self.folders)
        self.userdata = UserData(self.settings.user_dir, multi_user=self.settings.multi_user,
                                 max_bytes=self.settings.max_userdata_bytes)


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in the default thread pool (image decoding, file writes, listings)."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
