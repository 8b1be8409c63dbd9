"""Schemathesis, driven by the server's own /openapi.json: no operation answers with a 5xx, and the server lives.

A real server on loopback (built-in nodes, the stub nodes and the shipped tiny demo models). Each operation
gets a few derandomized examples that follow the schema and a few that break it; the whole run stays
within about a minute. Routes served twice (``/x`` and ``/api/x``) are fuzzed once, at ``/x``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.api.conftest import LiveServer, start_live_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
BUDGET_S = 75.0
SKIP_PATHS = {"/ws"}  # a websocket upgrade, covered by tests/api/test_websocket.py


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("loom-fuzz"), models_dirs=(ROOT / "models",))
    yield server
    server.stop()


def _operations(live: LiveServer) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=10)
    schema.config.update(base_url=live.url)
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/api/") or operation.path in SKIP_PATHS:
            continue
        operations.append(operation)
    return operations


def _fuzz(operation: Any, mode: GenerationMode, live: LiveServer, session: requests.Session,
          failures: list[str]) -> int:
    sent = [0]

    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        try:
            response = case.call(base_url=live.url, session=session, timeout=20)
        except requests.RequestException as exc:
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc!r}; "
                            f"body={_summary(case)}")
            return
        sent[0] += 1
        if response.status_code >= 500:
            failures.append(f"{operation.method.upper()} {case.formatted_path} ({mode.value}) -> "
                            f"{response.status_code}; query={case.query!r} body={_summary(case)}")

    try:
        run()
    except Unsatisfiable:  # nothing to break: e.g. negative examples of an operation without parameters
        pass
    return sent[0]


def _summary(case: Any) -> str:
    body = getattr(case, "body", None)
    text = repr(body)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} chars)"


def test_no_operation_answers_with_a_server_error(live: LiveServer) -> None:
    operations = _operations(live)
    assert len(operations) >= 15, [op.path for op in operations]
    failures: list[str] = []
    sent = 0
    start = time.monotonic()
    with requests.Session() as session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for operation in operations:
                if time.monotonic() - start > BUDGET_S:
                    break
                sent += _fuzz(operation, mode, live, session, failures)
                if live.get("/system_stats").status != 200:
                    failures.append(f"the server stopped answering after {operation.method.upper()} {operation.path}")
                    break
    assert not failures, "\n".join(failures[:30])
    assert sent >= len(operations) * 5
    assert live.get("/system_stats").status == 200
    assert live.thread.is_alive()
