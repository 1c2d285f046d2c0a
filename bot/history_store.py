"""Conversation history stores: the only module that touches SQLite.

A conversation is keyed by a string (``discord:<channel id>`` for a channel, thread or DM;
``console:<name>`` for the terminal mode). A turn is one chat message with an increasing id.
Turns are appended in groups (the user turn and the finished assistant turn together, in one
transaction), so a failed or interrupted reply never leaves half an exchange behind.

Each conversation also has a small state row: its rolling summary, where the context window
starts, and its settings (model, system prompt). It survives restarts like the turns do.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as sent to Ollama (``role`` and ``content``).
    ``id`` is given by the store (0 for a turn not stored yet)."""

    role: str
    content: str
    id: int = field(default=0, compare=False)
    ref: int | None = field(default=None, compare=False)  # the Discord message it came from

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ConversationState:
    """Per-conversation state kept with the history.

    Turns with ``id > window_start`` are in the context window. Turns up to ``summary_upto``
    are covered by ``summary``; turns between the two were dropped from the window and wait
    to be summarised. ``model`` and ``system_prompt`` override the defaults when set.
    """

    summary: str = ""
    summary_upto: int = 0
    window_start: int = 0
    model: str | None = None
    system_prompt: str | None = None


class HistoryStore(Protocol):
    """What the conversation engine needs from a store."""

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        """The conversation's turns with ``id > after``, oldest first."""
        ...

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        """Turns with ``after < id <= upto``, oldest first."""
        ...

    async def append(self, conversation: str, turns: Sequence[Turn]) -> list[Turn]:
        """Add turns atomically (all of them or none); returns them with their ids."""
        ...

    async def replace(
        self, conversation: str, remove: Sequence[int], turns: Sequence[Turn]
    ) -> list[Turn]:
        """Remove the turns with ids ``remove`` and append ``turns``, atomically."""
        ...

    async def clear(self, conversation: str) -> None:
        """Forget the turns and the summary; the conversation's settings stay."""
        ...

    async def get_state(self, conversation: str) -> ConversationState: ...

    async def set_state(self, conversation: str, state: ConversationState) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot answer (for /healthz)."""
        ...

    async def close(self) -> None: ...


class MemoryHistoryStore:
    """Dicts and lists: for tests and throwaway runs (``HISTORY_STORE=memory://``)."""

    def __init__(self) -> None:
        self._turns: dict[str, list[Turn]] = {}
        self._states: dict[str, ConversationState] = {}
        self._next_id = 1

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        return [t for t in self._turns.get(conversation, []) if t.id > after]

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        return [t for t in self._turns.get(conversation, []) if after < t.id <= upto]

    async def append(self, conversation: str, turns: Sequence[Turn]) -> list[Turn]:
        stored = []
        for turn in turns:
            stored.append(replace(turn, id=self._next_id))
            self._next_id += 1
        self._turns.setdefault(conversation, []).extend(stored)
        return stored

    async def replace(
        self, conversation: str, remove: Sequence[int], turns: Sequence[Turn]
    ) -> list[Turn]:
        kept = [t for t in self._turns.get(conversation, []) if t.id not in set(remove)]
        self._turns[conversation] = kept
        return await self.append(conversation, turns)

    async def clear(self, conversation: str) -> None:
        self._turns.pop(conversation, None)
        state = self._states.get(conversation)
        if state is not None:
            self._states[conversation] = ConversationState(
                model=state.model, system_prompt=state.system_prompt
            )

    async def get_state(self, conversation: str) -> ConversationState:
        return self._states.get(conversation, ConversationState())

    async def set_state(self, conversation: str, state: ConversationState) -> None:
        self._states[conversation] = state

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
    created_at REAL NOT NULL,
    ref INTEGER
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation, id);
CREATE TABLE IF NOT EXISTS conversations (
    conversation TEXT PRIMARY KEY,
    summary TEXT NOT NULL DEFAULT '',
    summary_upto INTEGER NOT NULL DEFAULT 0,
    window_start INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    system_prompt TEXT,
    updated_at REAL NOT NULL
);
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
            columns = {row[1] for row in db.execute("PRAGMA table_info(turns)")}
            if "ref" not in columns:  # a database from before the Regenerate button
                db.execute("ALTER TABLE turns ADD COLUMN ref INTEGER")
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Create the file and schema now, so a bad path fails at start-up, not at first use."""
        await self._run(self._connect)

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        return await self._run(self._load, conversation, after, None)

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        return await self._run(self._load, conversation, after, upto)

    def _load(self, conversation: str, after: int, upto: int | None) -> list[Turn]:
        rows = (
            self._connect()
            .execute(
                "SELECT id, role, content, ref FROM turns WHERE conversation = ? AND id > ? "
                "AND id <= ? ORDER BY id",
                (conversation, after, upto if upto is not None else 2**62),
            )
            .fetchall()
        )
        return [Turn(role, content, id, ref) for id, role, content, ref in rows]

    async def append(self, conversation: str, turns: Sequence[Turn]) -> list[Turn]:
        return await self._run(self._append, conversation, list(turns))

    def _append(
        self, conversation: str, turns: list[Turn], remove: Sequence[int] = ()
    ) -> list[Turn]:
        db = self._connect()
        now = time.time()
        stored = []
        with _transaction(db):
            db.executemany(
                "DELETE FROM turns WHERE conversation = ? AND id = ?",
                [(conversation, turn_id) for turn_id in remove],
            )
            for turn in turns:
                cursor = db.execute(
                    "INSERT INTO turns (conversation, role, content, created_at, ref) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (conversation, turn.role, turn.content, now, turn.ref),
                )
                stored.append(replace(turn, id=int(cursor.lastrowid or 0)))
        return stored

    async def replace(
        self, conversation: str, remove: Sequence[int], turns: Sequence[Turn]
    ) -> list[Turn]:
        return await self._run(self._append, conversation, list(turns), list(remove))

    async def clear(self, conversation: str) -> None:
        await self._run(self._clear, conversation)

    def _clear(self, conversation: str) -> None:
        db = self._connect()
        with _transaction(db):
            db.execute("DELETE FROM turns WHERE conversation = ?", (conversation,))
            db.execute(
                "UPDATE conversations SET summary = '', summary_upto = 0, window_start = 0, "
                "updated_at = ? WHERE conversation = ?",
                (time.time(), conversation),
            )

    async def get_state(self, conversation: str) -> ConversationState:
        return await self._run(self._get_state, conversation)

    def _get_state(self, conversation: str) -> ConversationState:
        row = (
            self._connect()
            .execute(
                "SELECT summary, summary_upto, window_start, model, system_prompt "
                "FROM conversations WHERE conversation = ?",
                (conversation,),
            )
            .fetchone()
        )
        return ConversationState(*row) if row else ConversationState()

    async def set_state(self, conversation: str, state: ConversationState) -> None:
        await self._run(self._set_state, conversation, state)

    def _set_state(self, conversation: str, state: ConversationState) -> None:
        self._connect().execute(
            "INSERT INTO conversations (conversation, summary, summary_upto, window_start, "
            "model, system_prompt, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (conversation) DO UPDATE SET summary = excluded.summary, "
            "summary_upto = excluded.summary_upto, window_start = excluded.window_start, "
            "model = excluded.model, system_prompt = excluded.system_prompt, "
            "updated_at = excluded.updated_at",
            (
                conversation,
                state.summary,
                state.summary_upto,
                state.window_start,
                state.model,
                state.system_prompt,
                time.time(),
            ),
        )

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
