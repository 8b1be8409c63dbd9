"""Persistent prompt queue and history, kept in one sqlite3 database (WAL).

Design
------
ComfyUI keeps its queue in a heap and its history in a dict, so a restart forgets both. Loom keeps
them in sqlite so that both survive a restart or a crash:

* ``items`` holds every prompt that is *pending* or *running* (``state`` column). The run order is
  ``(number, seq)``: the lowest ``number`` runs first (ComfyUI's priority semantics) and ``seq``,
  the insertion order, breaks ties so equal numbers run first-in first-out.
* ``history`` holds one finished prompt per row, its entry stored as JSON text in exactly the shape
  of ComfyUI's ``/history``: ``{"prompt": [5-tuple], "outputs", "status", "meta"}``. ``seq`` is the
  finish order; the oldest rows are trimmed once there are more than ``max_history``.
* ``counter`` persists the next automatic priority number, so numbers are never reused across
  restarts even when the rows that carried them are gone.

Crash recovery: a prompt that was *running* when the process died is never run again (a prompt that
crashes the process would otherwise crash it on every start). On open it moves to history as failed
with an ``execution_error`` message that says what happened. Pending prompts stay pending in order.

Concurrency: the queue is shared by the worker thread (``get``/``finish``) and the asyncio server
thread (everything else). One :class:`threading.Condition` guards the connection; every public
method holds it for one short transaction, and ``get`` waits on it. JSON is encoded and decoded
outside the lock where possible. Listeners (the server's "queue changed" broadcast) run after the
lock is released, in the thread that made the change.

Sensitive ``extra_data`` keys (API tokens) are kept in ``items`` because the executor needs them to
run the prompt, but :meth:`QueueItem.as_list` drops them, so they never reach ``/queue`` or history.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LoomError, QueueFull
from engine.jsonutil import dumps_compact

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SENSITIVE_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})
SENSITIVE_FRAGMENTS = ("token", "api_key")

CRASH_MESSAGE = "Loom stopped while this prompt was running (the process exited or crashed); it was not run again."
CRASH_EXCEPTION_TYPE = "loom.Crashed"

#: SQLite integers are signed 64-bit; a larger LIMIT/OFFSET would overflow the driver.
SQLITE_INT_MAX = 2**63 - 1
#: A history entry written before numbers were reported as integers starts ``{"prompt":[6.0,``.
_FLOAT_NUMBER_PREFIX = re.compile(r'^\{"prompt":\[(-?\d+)\.0,')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq        INTEGER PRIMARY KEY,
    prompt_id  TEXT NOT NULL UNIQUE,
    number     REAL NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    prompt     TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_run_order ON items (state, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq       INTEGER PRIMARY KEY,
    prompt_id TEXT NOT NULL UNIQUE,
    entry     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    next INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, next) VALUES (0, 1);
"""

_ITEM_COLUMNS = "number, prompt_id, prompt, extra_data, outputs"


class DuplicatePromptId(LoomError, ValueError):
    """POST /prompt named a prompt_id that is already queued, running or in the history."""


class QueueClosed(LoomError):
    """The prompt queue was closed; nothing more can be queued or recorded in it."""


def is_sensitive_key(key: str) -> bool:
    """Whether an ``extra_data`` key carries a secret that must not be shown or stored in history."""
    lowered = key.lower()
    return lowered in SENSITIVE_KEYS or any(fragment in lowered for fragment in SENSITIVE_FRAGMENTS)


def scrub_extra_data(extra_data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``extra_data`` without its secret top-level keys.

    Only top-level keys are checked: nested data such as ``extra_pnginfo.workflow`` is the user's
    graph, whose widget names (``max_tokens``...) must survive unchanged.
    """
    return {key: value for key, value in extra_data.items() if not is_sensitive_key(key)}


@dataclass(frozen=True)
class QueueItem:
    """One queued prompt, as the executor receives it (``extra_data`` unscrubbed)."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        """ComfyUI's 5-tuple ``[number, prompt_id, prompt, extra_data, outputs]``, secrets removed."""
        return [report_number(self.number), self.prompt_id, self.prompt, scrub_extra_data(self.extra_data),
                self.outputs]


def report_number(number: float) -> int | float:
    """A priority number as ComfyUI reports it: an integer when it is whole (6, not 6.0)."""
    return int(number) if float(number).is_integer() else number


def sql_int(value: int) -> int:
    """``value`` clamped to SQLite's integer range (a larger LIMIT or OFFSET means 'all' anyway)."""
    return max(-SQLITE_INT_MAX, min(value, SQLITE_INT_MAX))


def entry_text(stored: str) -> str:
    """A stored history entry's JSON text, its priority number made an integer when whole."""
    return _FLOAT_NUMBER_PREFIX.sub(r'{"prompt":[\1,', stored, count=1)


@dataclass(frozen=True)
class HistoryPage:
    """A ``GET /history`` reply as UTF-8 JSON (``{prompt_id: entry}``), built from the stored text."""

    body: bytes
    entries: int
    truncated: bool  # entries were left out to keep ``body`` within the byte budget


def crash_status(prompt_id: str, timestamp_ms: int) -> dict[str, Any]:
    """The history ``status`` of a prompt that was running when the process died."""
    error: dict[str, Any] = {
        "prompt_id": prompt_id,
        "exception_message": CRASH_MESSAGE,
        "exception_type": CRASH_EXCEPTION_TYPE,
        "node_id": None,
        "node_type": None,
        "executed": [],
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": timestamp_ms,
    }
    return {"status_str": "error", "completed": False, "messages": [["execution_error", error]]}


def history_entry_for(
    item: QueueItem, outputs: dict[str, Any], status: dict[str, Any], meta: dict[str, Any] | None
) -> dict[str, Any]:
    """A history entry in ComfyUI's shape."""
    return {"prompt": item.as_list(), "outputs": outputs, "status": status, "meta": meta or {}}


def _item_from_row(row: tuple[Any, ...]) -> QueueItem:
    number, prompt_id, prompt, extra_data, outputs = row
    return QueueItem(float(number), prompt_id, json.loads(prompt), json.loads(extra_data), json.loads(outputs))


def _now_ms() -> int:
    return int(time.time() * 1000)


class PromptQueue:
    """Pending and running prompts plus finished history, persisted in sqlite (see module docstring)."""

    def __init__(self, path: Path, *, max_pending: int = 1000, max_history: int = 10_000) -> None:
        if max_pending < 1 or max_history < 0:
            raise ValueError(
                f"max_pending must be at least 1 and max_history at least 0, got {max_pending} and {max_history}"
            )
        self.path = Path(path)
        self.max_pending = max_pending
        self.max_history = max_history
        self._cond = threading.Condition(threading.Lock())
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self._history_count = 0  # rows in `history`, kept here so trimming needs no COUNT(*) scan
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect(self.path)
        try:
            with self._cond:
                self._create_schema()
                self._recover_running()
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _create_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LoomError(
                f"the queue database {self.path} has schema version {version}, newer than this Loom "
                f"understands ({SCHEMA_VERSION}); upgrade Loom or point it at another data folder"
            )
        with self._transaction():
            self._run_schema()
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _run_schema(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _recover_running(self) -> None:
        """Move prompts left 'running' by a dead process into history as failed; never re-run them."""
        timestamp = _now_ms()
        self._history_count = self._count_history()
        with self._transaction():
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE state = 'running' ORDER BY seq"
            ).fetchall()
            for row in rows:
                item = _item_from_row(row)
                logger.warning("prompt %s was running when Loom stopped; recorded as failed", item.prompt_id)
                entry = history_entry_for(item, {}, crash_status(item.prompt_id, timestamp), None)
                self._move_to_history(item.prompt_id, dumps_compact(entry, default=None))
            self._trim_history()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises. Caller holds the lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._history_count = self._count_history()
            raise
        self._db.execute("COMMIT")

    def _count_history(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0])

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"the prompt queue at {self.path} is closed")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the database and wake every waiting :meth:`get`, which then returns None."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._cond.notify_all()

    def __enter__(self) -> PromptQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ listeners

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every change of pending/running prompts (outside the lock)."""
        with self._cond:
            self._listeners.append(callback)

    def _notify(self) -> None:
        with self._cond:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:
                logger.exception("queue listener %r raised; the queue goes on", callback)

    # ------------------------------------------------------------------ queue

    def put(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        outputs: list[str],
        *,
        number: float | None = None,
        front: bool = False,
    ) -> float:
        """Queue a prompt and return its priority number (lowest runs first).

        Without ``number`` the persisted counter gives the next one, negated when ``front`` is set so
        the prompt runs before everything queued so far (ComfyUI's rule).
        """
        if number is not None and not math.isfinite(number):
            raise ValueError(f"the priority number must be a finite number, got {number!r}")
        texts = tuple(dumps_compact(value, default=None) for value in (prompt, extra_data, list(outputs)))
        with self._cond:
            self._check_open()
            with self._transaction():
                self._check_room()
                self._check_new_id(prompt_id)
                assigned = float(number) if number is not None else self._next_number(front)
                self._db.execute(
                    "INSERT INTO items (prompt_id, number, state, prompt, extra_data, outputs) "
                    "VALUES (?, ?, 'pending', ?, ?, ?)",
                    (prompt_id, assigned, *texts),
                )
            self._cond.notify_all()
        self._notify()
        return assigned

    def _check_room(self) -> None:
        pending = self._db.execute("SELECT COUNT(*) FROM items WHERE state = 'pending'").fetchone()[0]
        if pending >= self.max_pending:
            raise QueueFull(
                f"the queue holds {pending} pending prompts, its maximum; wait for some to finish or "
                'delete pending ones with POST /queue {"delete": [...]}'
            )

    def _check_new_id(self, prompt_id: str) -> None:
        where = self._where_is(prompt_id)
        if where is not None:
            raise DuplicatePromptId(
                f"prompt_id {prompt_id!r} is already used by a prompt that is {where}; send another "
                "prompt_id, or none and the server makes a new one"
            )

    def _where_is(self, prompt_id: str) -> str | None:
        """'pending', 'running', 'in history' or None: where a prompt id is already used."""
        row = self._db.execute("SELECT state FROM items WHERE prompt_id = ?", (prompt_id,)).fetchone()
        if row is not None:
            return str(row[0])
        row = self._db.execute("SELECT 1 FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return None if row is None else "in history"

    def _next_number(self, front: bool) -> float:
        value = self._db.execute("SELECT next FROM counter WHERE id = 0").fetchone()[0]
        self._db.execute("UPDATE counter SET next = ? WHERE id = 0", (value + 1,))
        return float(-value if front else value)

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """Take the next pending prompt and mark it running; wait up to ``timeout`` s (None: forever).

        Returns None when the timeout passes or the queue is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                item = self._take_next()
                if item is not None:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
        self._notify()
        return item

    def _take_next(self) -> QueueItem | None:
        """Mark the first pending prompt running. The caller holds the lock, so the read and the
        one-statement (autocommit) update cannot interleave with another change; an empty queue
        costs one indexed read and no write transaction."""
        row = self._db.execute(
            f"SELECT seq, {_ITEM_COLUMNS} FROM items WHERE state = 'pending' ORDER BY number, seq LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE items SET state = 'running' WHERE seq = ?", (row[0],))
        return _item_from_row(row[1:])

    def release(self, prompt_id: str) -> bool:
        """Give a running prompt back to the queue, in its old place (its number is kept): for a runner that
        stops after taking a prompt and before starting it. False when it is not running."""
        with self._cond:
            self._check_open()
            cursor = self._db.execute("UPDATE items SET state = 'pending' WHERE prompt_id = ? AND state = 'running'",
                                      (prompt_id,))
            released = cursor.rowcount > 0
            if released:
                self._cond.notify_all()
        if released:
            self._notify()
        return released

    def finish(
        self,
        prompt_id: str,
        *,
        outputs: dict[str, Any],
        status: dict[str, Any],
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Record a running prompt's result in history and remove it from the queue."""
        with self._cond:
            self._check_open()
            with self._transaction():
                row = self._db.execute(
                    f"SELECT {_ITEM_COLUMNS} FROM items WHERE prompt_id = ? AND state = 'running'",
                    (prompt_id,),
                ).fetchone()
                if row is None:
                    raise ValueError(f"prompt {prompt_id!r} is not running, so it cannot be finished")
                entry = history_entry_for(_item_from_row(row), outputs, status, meta)
                self._move_to_history(prompt_id, dumps_compact(entry, default=None))
                self._trim_history()
        self._notify()

    def _move_to_history(self, prompt_id: str, entry_text: str) -> None:
        self._db.execute("DELETE FROM items WHERE prompt_id = ?", (prompt_id,))
        self._db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)", (prompt_id, entry_text))
        self._history_count += 1

    def _trim_history(self) -> None:
        """Delete the oldest history rows beyond ``max_history``.

        The row count is kept in memory, so a finish at the cap costs one primary-key lookup and
        delete instead of a scan that grows with the history.
        """
        excess = self._history_count - self.max_history
        if excess <= 0:
            return
        cursor = self._db.execute(
            "DELETE FROM history WHERE seq IN (SELECT seq FROM history ORDER BY seq LIMIT ?)", (excess,)
        )
        self._history_count -= cursor.rowcount

    def running(self) -> list[QueueItem]:
        """Prompts being run now, oldest first."""
        return self._select_items("WHERE state = 'running' ORDER BY seq")

    def pending(self) -> list[QueueItem]:
        """Prompts waiting to run, in the order they will run."""
        return self._select_items("WHERE state = 'pending' ORDER BY number, seq")

    def _select_items(self, clause: str) -> list[QueueItem]:
        with self._cond:
            self._check_open()
            rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items {clause}").fetchall()
        return [_item_from_row(row) for row in rows]

    def remaining(self) -> int:
        """Pending plus running prompts: ComfyUI's ``queue_remaining``."""
        with self._cond:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def delete(self, prompt_ids: Iterable[str]) -> int:
        """Delete these prompts if they are pending (a running one is left alone); return how many."""
        params = [(prompt_id,) for prompt_id in prompt_ids]
        with self._cond:
            self._check_open()
            with self._transaction():
                cursor = self._db.executemany("DELETE FROM items WHERE prompt_id = ? AND state = 'pending'", params)
            count = max(cursor.rowcount, 0)
        if count:
            self._notify()
        return count

    def clear(self) -> int:
        """Delete every pending prompt; return how many."""
        with self._cond:
            self._check_open()
            with self._transaction():
                count = self._db.execute("DELETE FROM items WHERE state = 'pending'").rowcount
        if count:
            self._notify()
        return count

    # ------------------------------------------------------------------ history

    def history(self, max_items: int | None = None, offset: int = 0) -> dict[str, dict[str, Any]]:
        """``{prompt_id: entry}`` oldest first, as ComfyUI's ``GET /history?max_items=&offset=``.

        Skips ``offset`` oldest entries and returns at most ``max_items``. A negative offset with
        ``max_items`` returns the newest ``max_items``; a negative offset alone returns everything.
        """
        with self._cond:
            self._check_open()
            rows = self._history_cursor(max_items, offset).fetchall()
        if offset < 0 and max_items is not None:
            rows.reverse()
        return {prompt_id: json.loads(entry_text(entry)) for prompt_id, entry in rows}

    def history_page(self, max_items: int | None = None, offset: int = 0, *,
                     max_bytes: int | None = None) -> HistoryPage:
        """:meth:`history` as JSON bytes of at most ``max_bytes``, made from the stored text (no decoding).

        Entries that would pass the budget are left out: the oldest when the newest are asked for
        (a negative offset), the newest otherwise (page on with ``offset``). The rows are read one by
        one, so a large history is never held in memory beyond the budget.
        """
        newest_first = offset < 0
        parts: list[bytes] = []
        size, truncated = 2, False
        with self._cond:
            self._check_open()
            for prompt_id, entry in self._history_cursor(max_items, offset, newest_first=newest_first):
                part = f"{dumps_compact(prompt_id)}:{entry_text(entry)}".encode()
                if max_bytes is not None and size + len(part) + 1 > max_bytes:
                    truncated = True
                    break
                parts.append(part)
                size += len(part) + 1
        if newest_first:
            parts.reverse()
        return HistoryPage(b"{" + b",".join(parts) + b"}", len(parts), truncated)

    def _history_cursor(self, max_items: int | None, offset: int, *, newest_first: bool | None = None
                        ) -> sqlite3.Cursor:
        """Rows ``(prompt_id, entry)`` of a history query (see :meth:`history`). Caller holds the lock.

        ``newest_first`` (default: a negative offset with ``max_items``) reads from the newest entry.
        Out-of-range numbers are clamped, so no request can overflow SQLite's integers.
        """
        limit = -1 if max_items is None else sql_int(max(max_items, 0))
        if newest_first is None:
            newest_first = offset < 0 and max_items is not None
        if newest_first:
            return self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq DESC LIMIT ?", (limit,))
        return self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                (limit, sql_int(max(offset, 0))))

    def history_ids(self) -> list[str]:
        """The prompt ids of every history entry, oldest first (no entry is read)."""
        with self._cond:
            self._check_open()
            return [row[0] for row in self._db.execute("SELECT prompt_id FROM history ORDER BY seq")]

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """One prompt's history entry, or None when it has none."""
        with self._cond:
            self._check_open()
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return None if row is None else json.loads(entry_text(row[0]))

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        """Forget these prompts' history entries; return how many were there."""
        params = [(prompt_id,) for prompt_id in prompt_ids]
        with self._cond:
            self._check_open()
            with self._transaction():
                cursor = self._db.executemany("DELETE FROM history WHERE prompt_id = ?", params)
            count = max(cursor.rowcount, 0)
            self._history_count -= count
            return count

    def clear_history(self) -> int:
        """Forget every history entry; return how many there were."""
        with self._cond:
            self._check_open()
            with self._transaction():
                count = self._db.execute("DELETE FROM history").rowcount
            self._history_count = 0
            return count
