"""Browser tests keep their screenshots: each test's PNGs are copied to test-output/screenshots/PACKAGE.MODULE/TEST/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@pytest.fixture(autouse=True)
def keep_screenshots(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After each test, copy the screenshots it wrote to its ``tmp_path`` (top level only)."""
    yield
    shots = sorted(tmp_path.glob("*.png"))
    if not shots:
        return
    module = request.node.module.__name__.removeprefix("tests.")  # frontend.test_editor, cluster.test_editor
    target = SCREENSHOTS / module / re.sub(r"[^\w.-]", "_", request.node.name)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for shot in shots:
        shutil.copy2(shot, target / shot.name)
