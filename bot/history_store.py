"""Conversation history stores: the only module that touches SQLite.

A conversation is keyed by a string (``discord:<channel id>`` for a channel, thread or DM;
``console:<name>`` for the terminal mode). A turn is one chat message. Turns are appended in
groups (the user turn and the finished assistant turn together, in one transaction), so a
failed or interrupted reply never leaves half an exchange behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as sent to Ollama (``role`` and ``content``)."""

    role: str
    content: str

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class HistoryStore(Protocol):
    """What the conversation engine needs from a store."""

    async def load(self, conversation: str, limit: int | None = None) -> list[Turn]:
        """The conversation's turns, oldest first; only the newest ``limit`` if given."""
        ...

    async def append(self, conversation: str, turns: Sequence[Turn]) -> None:
        """Add turns atomically: all of them or none."""
        ...

    async def clear(self, conversation: str) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot answer (for /healthz)."""
        ...

    async def close(self) -> None: ...


class MemoryHistoryStore:
    """A dict of lists: for tests and throwaway runs (``HISTORY_STORE=memory://``)."""

    def __init__(self) -> None:
        self._turns: dict[str, list[Turn]] = {}

    async def load(self, conversation: str, limit: int | None = None) -> list[Turn]:
        turns = self._turns.get(conversation, [])
        return list(turns if limit is None else turns[len(turns) - limit :] if limit else [])

    async def append(self, conversation: str, turns: Sequence[Turn]) -> None:
        self._turns.setdefault(conversation, []).extend(turns)

    async def clear(self, conversation: str) -> None:
        self._turns.pop(conversation, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation, id);
"""


class SqliteHistoryStore:
    """SQLite file store (the embedded default). Survives restarts and ``kill -9``.

    sqlite3 blocks, so every call runs on one dedicated thread: calls are serialised in the
    order they are made, and the event loop never waits on the disk. WAL mode with
    ``synchronous=NORMAL`` keeps commits durable across a process crash.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Create the file and schema now, so a bad path fails at start-up, not at first use."""
        await self._run(self._connect)

    async def load(self, conversation: str, limit: int | None = None) -> list[Turn]:
        return await self._run(self._load, conversation, limit)

    def _load(self, conversation: str, limit: int | None) -> list[Turn]:
        db = self._connect()
        if limit is None:
            rows = db.execute(
                "SELECT role, content FROM turns WHERE conversation = ? ORDER BY id",
                (conversation,),
            ).fetchall()
        else:
            rows = db.execute(
                "SELECT role, content FROM (SELECT id, role, content FROM turns "
                "WHERE conversation = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                (conversation, limit),
            ).fetchall()
        return [Turn(role, content) for role, content in rows]

    async def append(self, conversation: str, turns: Sequence[Turn]) -> None:
        await self._run(self._append, conversation, list(turns))

    def _append(self, conversation: str, turns: list[Turn]) -> None:
        db = self._connect()
        now = time.time()
        with _transaction(db):
            db.executemany(
                "INSERT INTO turns (conversation, role, content, created_at) VALUES (?, ?, ?, ?)",
                [(conversation, t.role, t.content, now) for t in turns],
            )

    async def clear(self, conversation: str) -> None:
        await self._run(self._clear, conversation)

    def _clear(self, conversation: str) -> None:
        db = self._connect()
        with _transaction(db):
            db.execute("DELETE FROM turns WHERE conversation = ?", (conversation,))

    async def ping(self) -> None:
        await self._run(lambda: self._connect().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def open_history_store(url: str) -> HistoryStore:
    """Build the store named by ``HISTORY_STORE`` (already validated by Settings)."""
    if url == "memory://":
        return MemoryHistoryStore()
    if url.startswith("sqlite:///"):
        return SqliteHistoryStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"unknown history store {url!r}")
