from __future__ import annotations

from pathlib import Path

import pytest

from engine.cache import OutputCache
from engine.executor import Executor
from engine.folders import Folders
from tests.support.stub_nodes import StubWorld, make_registry


@pytest.fixture
def world() -> StubWorld:
    return make_registry()


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    f = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", ())
    f.ensure()
    return f


@pytest.fixture
def executor(world: StubWorld, folders: Folders) -> Executor:
    return Executor(world.registry, folders, OutputCache(max_bytes=10**8, max_entries=1000))
