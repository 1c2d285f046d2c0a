"""The SQLite history store (the embedded default): the only module that touches SQLite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .history_store import (
    ConversationState,
    StateChange,
    StoredImage,
    StoreError,
    Turn,
    changed,
    cleared,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    ref INTEGER,
    reasoning TEXT NOT NULL DEFAULT '',
    images TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation, id);
CREATE TABLE IF NOT EXISTS conversations (
    conversation TEXT PRIMARY KEY,
    summary TEXT NOT NULL DEFAULT '',
    summary_upto INTEGER NOT NULL DEFAULT 0,
    window_start INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    system_prompt TEXT,
    updated_at REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    summary_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS open_replies (
    conversation TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL
);
"""

# Columns added after the first release, for databases created before them.
_MIGRATIONS = (
    ("turns", "ref", "INTEGER"),
    ("turns", "reasoning", "TEXT NOT NULL DEFAULT ''"),
    ("turns", "images", "TEXT NOT NULL DEFAULT ''"),
    ("conversations", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("conversations", "summary_at", "REAL NOT NULL DEFAULT 0"),
)

_STATE_COLUMNS = "summary, summary_upto, window_start, model, system_prompt, epoch, summary_at"


class SqliteHistoryStore:
    """SQLite file store. Survives restarts and ``kill -9``.

    sqlite3 blocks, so every call runs on one dedicated thread: calls are serialised in the
    order they are made, and the event loop never waits on the disk. Each method that writes is
    one ``BEGIN IMMEDIATE`` transaction; reads are single statements. WAL mode with
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
            try:
                # The first statement reads the file's header: a file that is not a database
                # fails here, before anything is written to it.
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                for table, column, kind in _MIGRATIONS:
                    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread. A failure while the bot runs (disk full, the
        file gone read-only) is a StoreError naming the file and the cause."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"HISTORY_STORE points at {str(self.path)!r}, which failed: {exc}"
            ) from exc

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connect)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(self._explain(exc)) from exc

    def _explain(self, exc: OSError | sqlite3.Error) -> str:
        where = f"HISTORY_STORE points at {str(self.path)!r}"
        if self.path.is_dir():
            return (
                f"{where}, which is a directory: give a file path, e.g. sqlite:///data/history.db"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            return (
                f"{where}, which is not a SQLite database (or is damaged). It was left as it "
                "is: move it away, or point HISTORY_STORE at another file."
            )
        return (
            f"{where}, which cannot be opened or created ({exc}): its directory must exist "
            "or be creatable, and be writable by the user the bot runs as."
        )

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        return await self._run(self._load, conversation, after, None)

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        return await self._run(self._load, conversation, after, upto)

    def _load(self, conversation: str, after: int, upto: int | None) -> list[Turn]:
        rows = (
            self._connect()
            .execute(
                "SELECT id, role, content, ref, reasoning, images FROM turns "
                "WHERE conversation = ? AND id > ? "
                "AND id <= ? ORDER BY id",
                (conversation, after, upto if upto is not None else 2**62),
            )
            .fetchall()
        )
        return [
            Turn(role, content, id, ref, reasoning, _images_from(images))
            for id, role, content, ref, reasoning, images in rows
        ]

    async def append(
        self, conversation: str, turns: Sequence[Turn], *, epoch: int | None = None
    ) -> list[Turn] | None:
        return await self._run(self._replace, conversation, (), list(turns), epoch)

    async def replace(
        self,
        conversation: str,
        remove: Sequence[int],
        turns: Sequence[Turn],
        *,
        epoch: int | None = None,
    ) -> list[Turn] | None:
        return await self._run(self._replace, conversation, list(remove), list(turns), epoch)

    def _replace(
        self, conversation: str, remove: Sequence[int], turns: list[Turn], epoch: int | None
    ) -> list[Turn] | None:
        now = time.time()
        stored = []
        with self._transaction() as db:
            if epoch is not None and epoch != self._read_state(db, conversation).epoch:
                return None  # reset since the reply started: its exchange is not kept
            db.executemany(
                "DELETE FROM turns WHERE conversation = ? AND id = ?",
                [(conversation, turn_id) for turn_id in remove],
            )
            for turn in turns:
                cursor = db.execute(
                    "INSERT INTO turns (conversation, role, content, created_at, ref, reasoning, "
                    "images) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        conversation,
                        turn.role,
                        turn.content,
                        now,
                        turn.ref,
                        turn.reasoning,
                        _images_to(turn.images),
                    ),
                )
                stored.append(replace(turn, id=int(cursor.lastrowid or 0)))
        return stored

    async def clear(self, conversation: str) -> int:
        return await self._run(self._clear, conversation)

    def _clear(self, conversation: str) -> int:
        with self._transaction() as db:
            db.execute("DELETE FROM turns WHERE conversation = ?", (conversation,))
            state = cleared(self._read_state(db, conversation))
            self._write_state(db, conversation, state)
        return state.epoch

    async def get_state(self, conversation: str) -> ConversationState:
        return await self._run(lambda: self._read_state(self._connect(), conversation))

    async def update_state(self, conversation: str, change: StateChange) -> ConversationState:
        return await self._run(self._update_state, conversation, change)

    def _update_state(self, conversation: str, change: StateChange) -> ConversationState:
        with self._transaction() as db:
            current = self._read_state(db, conversation)
            state = changed(current, change)
            if state is not current:
                self._write_state(db, conversation, state)
        return state

    @staticmethod
    def _read_state(db: sqlite3.Connection, conversation: str) -> ConversationState:
        row = db.execute(
            f"SELECT {_STATE_COLUMNS} FROM conversations WHERE conversation = ?", (conversation,)
        ).fetchone()
        return ConversationState(*row) if row else ConversationState()

    @staticmethod
    def _write_state(db: sqlite3.Connection, conversation: str, state: ConversationState) -> None:
        db.execute(
            f"INSERT INTO conversations (conversation, {_STATE_COLUMNS}, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (conversation) DO UPDATE SET summary = excluded.summary, "
            "summary_upto = excluded.summary_upto, window_start = excluded.window_start, "
            "model = excluded.model, system_prompt = excluded.system_prompt, "
            "epoch = excluded.epoch, summary_at = excluded.summary_at, "
            "updated_at = excluded.updated_at",
            (
                conversation,
                state.summary,
                state.summary_upto,
                state.window_start,
                state.model,
                state.system_prompt,
                state.epoch,
                state.summary_at,
                time.time(),
            ),
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection autocommits)."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # also when COMMIT itself failed: never leave one open
                db.execute("ROLLBACK")
            raise

    async def set_open_reply(self, conversation: str, message_id: int | None) -> None:
        await self._run(self._set_open_reply, conversation, message_id)

    def _set_open_reply(self, conversation: str, message_id: int | None) -> None:
        db = self._connect()
        if message_id is None:
            db.execute("DELETE FROM open_replies WHERE conversation = ?", (conversation,))
        else:
            db.execute(
                "INSERT INTO open_replies (conversation, message_id) VALUES (?, ?) "
                "ON CONFLICT (conversation) DO UPDATE SET message_id = excluded.message_id",
                (conversation, message_id),
            )

    async def open_replies(self) -> dict[str, int]:
        rows = await self._run(
            lambda: (
                self._connect()
                .execute("SELECT conversation, message_id FROM open_replies")
                .fetchall()
            )
        )
        return {conversation: int(message_id) for conversation, message_id in rows}

    async def ping(self) -> None:
        await self._run(lambda: self._connect().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


def _images_to(images: tuple[StoredImage, ...]) -> str:
    # JSON of name and base64 (the form Ollama takes): a turn's images stay in its row, so a
    # turn is written (and removed) with its images in the same statement.
    return json.dumps([[i.filename, i.base64] for i in images]) if images else ""


def _images_from(text: str) -> tuple[StoredImage, ...]:
    return tuple(StoredImage(name, data) for name, data in json.loads(text)) if text else ()
