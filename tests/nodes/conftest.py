"""Fixtures for node tests: a RunContext over temporary input/output/temp folders."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.context import RunContext
from engine.events import ListSink
from engine.folders import Folders


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    made = Folders(
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        temp_dir=tmp_path / "temp",
        model_roots=(),
    )
    made.ensure()
    return made


@pytest.fixture
def ctx(folders: Folders) -> RunContext:
    return RunContext(
        node_id="1",
        prompt_id="p",
        folders=folders,
        sink=ListSink(),
        interrupt=threading.Event(),
    )
