"""Record engine events per client id, and wait for one (no sleeps): ``sink_for`` is an EventSink factory."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from engine.events import Event


class RecordingSinks:
    """sink_for(client_id): every event, per client id, in order; wait_for() blocks until one arrives."""

    def __init__(self) -> None:
        self.events: dict[str | None, list[Event]] = defaultdict(list)
        self._changed = threading.Condition()

    def sink_for(self, client_id: str | None) -> Any:
        sinks = self

        class _Sink:
            def emit(self, event: Event) -> None:
                with sinks._changed:
                    sinks.events[client_id].append(event)
                    sinks._changed.notify_all()

        return _Sink()

    def wait_for(self, client_id: str | None, match: Callable[[Event], bool], timeout: float) -> Event:
        """The first event of ``client_id`` that ``match`` accepts, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events[client_id] if match(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.type for e in self.events[client_id]]
                    raise AssertionError(f"no matching event for {client_id!r} in {timeout} s; got {seen}")
                self._changed.wait(left)
