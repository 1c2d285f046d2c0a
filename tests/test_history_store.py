"""History stores: append is atomic, order kept, conversations separate, SQLite durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import open_history_store
from bot.history_store import ConversationState, MemoryHistoryStore, Turn
from bot.sqlite_store import SqliteHistoryStore


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


async def test_turns_get_increasing_ids_and_load_after_or_in_a_range(store) -> None:  # type: ignore[no-untyped-def]
    stored = await store.append("a", [Turn("user", str(i)) for i in range(6)])
    ids = [t.id for t in stored]
    assert ids == sorted(ids) and len(set(ids)) == 6 and ids[0] > 0
    assert [t.content for t in await store.load("a", after=ids[2])] == ["3", "4", "5"]
    assert [t.content for t in await store.load_range("a", ids[0], ids[3])] == ["1", "2", "3"]
    assert [t.id for t in await store.load("a")] == ids


async def test_state_round_trips_and_clear_keeps_the_settings(store) -> None:  # type: ignore[no-untyped-def]
    assert await store.get_state("a") == ConversationState()
    state = ConversationState("they like tea", 4, 6, "qwen3", "Be brief.")
    await store.update_state("a", lambda _: state)
    assert await store.get_state("a") == state
    assert await store.get_state("b") == ConversationState()
    await store.append("a", [Turn("user", "x")])
    await store.clear("a")
    after = ConversationState(model="qwen3", system_prompt="Be brief.", epoch=1)
    assert await store.get_state("a") == after
    assert await store.load("a") == []


async def test_clear_forgets_one_conversation_only(store) -> None:  # type: ignore[no-untyped-def]
    await store.append("a", [Turn("user", "1")])
    await store.append("b", [Turn("user", "2")])
    await store.clear("a")
    assert await store.load("a") == []
    assert len(await store.load("b")) == 1


async def test_sqlite_history_and_state_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "history.db"
    first = SqliteHistoryStore(path)
    await first.append("c", [Turn("user", "hi 🌤"), Turn("assistant", "hello")])
    await first.update_state("c", lambda _: ConversationState("summary", 1, 1, None, "sys"))
    await first.close()
    second = SqliteHistoryStore(path)
    assert await second.load("c") == [Turn("user", "hi 🌤"), Turn("assistant", "hello")]
    assert await second.get_state("c") == ConversationState("summary", 1, 1, None, "sys")
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
