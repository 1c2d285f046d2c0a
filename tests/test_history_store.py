"""History stores: append is atomic, order kept, conversations separate, SQLite durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.history_store import (
    MemoryHistoryStore,
    SqliteHistoryStore,
    Turn,
    open_history_store,
)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = MemoryHistoryStore() if request.param == "memory" else SqliteHistoryStore(tmp_path / "h.db")
    yield s
    await s.close()


async def test_turns_come_back_in_order_and_conversations_are_separate(store) -> None:  # type: ignore[no-untyped-def]
    await store.append("a", [Turn("user", "1"), Turn("assistant", "2")])
    await store.append("b", [Turn("user", "x")])
    await store.append("a", [Turn("user", "3"), Turn("assistant", "4")])
    assert [t.content for t in await store.load("a")] == ["1", "2", "3", "4"]
    assert [t.content for t in await store.load("b")] == ["x"]
    assert await store.load("nobody") == []


async def test_limit_keeps_the_newest_turns(store) -> None:  # type: ignore[no-untyped-def]
    await store.append("a", [Turn("user", str(i)) for i in range(10)])
    assert [t.content for t in await store.load("a", limit=3)] == ["7", "8", "9"]
    assert await store.load("a", limit=0) == []


async def test_clear_forgets_one_conversation_only(store) -> None:  # type: ignore[no-untyped-def]
    await store.append("a", [Turn("user", "1")])
    await store.append("b", [Turn("user", "2")])
    await store.clear("a")
    assert await store.load("a") == []
    assert len(await store.load("b")) == 1


async def test_sqlite_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "history.db"
    first = SqliteHistoryStore(path)
    await first.append("c", [Turn("user", "hi 🌤"), Turn("assistant", "hello")])
    await first.close()
    second = SqliteHistoryStore(path)
    assert await second.load("c") == [Turn("user", "hi 🌤"), Turn("assistant", "hello")]
    await second.close()


async def test_sqlite_append_is_all_or_nothing(tmp_path: Path) -> None:
    store = SqliteHistoryStore(tmp_path / "h.db")
    await store.append("c", [Turn("user", "kept")])
    bad = Turn("assistant", None)  # type: ignore[arg-type]  # NOT NULL violation mid-batch
    with pytest.raises(Exception, match="NOT NULL"):
        await store.append("c", [Turn("user", "orphan"), bad])
    assert [t.content for t in await store.load("c")] == ["kept"]
    await store.close()


def test_open_history_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_history_store("memory://"), MemoryHistoryStore)
    sqlite = open_history_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(sqlite, SqliteHistoryStore)
    assert sqlite.path == tmp_path / "x.db"
