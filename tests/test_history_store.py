"""History stores: the contract, for the memory, SQLite and Redis stores alike (append is atomic,
order kept, conversations separate, ids global, the epoch, atomic state changes); SQLite and
Redis durable; Redis against a real redis-server, shared by several clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from bot.app import open_history_store
from bot.history_store import (
    ConversationState,
    HistoryStore,
    MemoryHistoryStore,
    StoredImage,
    StoreError,
    Turn,
)
from bot.redis_store import RedisHistoryStore
from bot.settings import ConfigError, Settings
from bot.sqlite_store import SqliteHistoryStore
from tests.redis_server import RedisServer, free_port, started_redis

Clients = Callable[[], HistoryStore]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = started_redis(directory)
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def clients(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Clients]:
    """Makes clients of one store: each SQLite or Redis client is its own connection (as
    another process would have); the memory store has only the one."""
    kind = request.param
    url = request.getfixturevalue("redis_server").url if kind == "redis" else ""
    memory = MemoryHistoryStore()
    made: list[HistoryStore] = []

    def make() -> HistoryStore:
        store: HistoryStore = (
            memory
            if kind == "memory"
            else SqliteHistoryStore(tmp_path / "h.db")
            if kind == "sqlite"
            else RedisHistoryStore(url)
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def store(clients: Clients) -> HistoryStore:
    store = clients()
    await store.open()
    return store


async def test_turns_come_back_in_order_and_conversations_are_separate(store: HistoryStore) -> None:
    await store.append("a", [Turn("user", "1"), Turn("assistant", "2")])
    await store.append("b", [Turn("user", "x")])
    await store.append("a", [Turn("user", "3"), Turn("assistant", "4")])
    assert [t.content for t in await store.load("a")] == ["1", "2", "3", "4"]
    assert [t.content for t in await store.load("b")] == ["x"]
    assert await store.load("nobody") == []


async def test_turns_get_increasing_ids_and_load_after_or_in_a_range(store: HistoryStore) -> None:
    stored = await store.append("a", [Turn("user", str(i)) for i in range(6)])
    assert stored is not None
    ids = [t.id for t in stored]
    assert ids == sorted(ids) and len(set(ids)) == 6 and ids[0] > 0
    assert [t.content for t in await store.load("a", after=ids[2])] == ["3", "4", "5"]
    assert [t.content for t in await store.load_range("a", ids[0], ids[3])] == ["1", "2", "3"]
    assert [t.id for t in await store.load("a")] == ids


async def test_state_round_trips_and_clear_keeps_the_settings(store: HistoryStore) -> None:
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


async def test_clear_forgets_one_conversation_only(store: HistoryStore) -> None:
    await store.append("a", [Turn("user", "1")])
    await store.append("b", [Turn("user", "2")])
    await store.clear("a")
    assert await store.load("a") == []
    assert len(await store.load("b")) == 1


async def test_turns_keep_their_text_and_discord_message(store: HistoryStore) -> None:
    turns = [Turn("user", "hi 🌤\nsecond line: {}", ref=1234567890123456789), Turn("assistant", "")]
    await store.append("discord:1", turns)
    found = await store.load("discord:1")
    assert found == turns and [t.ref for t in found] == [1234567890123456789, None]


async def test_turns_keep_their_reasoning_and_images(store: HistoryStore) -> None:
    image = StoredImage("photo.jpg", "aGVsbG8=")
    await store.append(
        "c",
        [
            Turn("user", "look", ref=5, images=(image,)),
            Turn("assistant", "a cat", reasoning="It has whiskers."),
        ],
    )
    question, answer = await store.load("c")
    assert question.images == (image,) and question.ref == 5
    assert answer.reasoning == "It has whiskers." and answer.images == ()


async def test_turn_ids_are_global_and_never_reused(store: HistoryStore) -> None:
    ids = []
    for conversation in ("a", "b", "a"):
        stored = await store.append(conversation, [Turn("user", "q"), Turn("assistant", "r")])
        assert stored is not None
        ids += [t.id for t in stored]
    await store.clear("a")
    again = await store.append("a", [Turn("user", "after the reset")])
    assert again is not None
    ids.append(again[0].id)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_an_append_with_a_stale_epoch_stores_nothing(store: HistoryStore) -> None:
    first = await store.append("a", [Turn("user", "old")], epoch=0)
    assert first is not None
    started_in = (await store.get_state("a")).epoch  # a reply starts...
    assert await store.clear("a") == started_in + 1  # ...a /reset wins...
    assert (
        await store.append("a", [Turn("user", "q"), Turn("assistant", "r")], epoch=started_in)
        is None
    )
    assert await store.load("a") == []  # ...and the reply's exchange is not kept
    kept = await store.append("a", [Turn("user", "new")], epoch=started_in + 1)
    assert kept is not None
    stale = await store.replace("a", [kept[0].id], [Turn("user", "x")], epoch=started_in)
    assert stale is None
    assert [t.content for t in await store.load("a")] == ["new"]  # nothing removed either


async def test_clear_bumps_the_epoch_and_keeps_the_settings(store: HistoryStore) -> None:
    state = ConversationState("summary", 3, 5, "qwen3", "Be brief.", summary_at=1700000000.5)
    await store.update_state("a", lambda _: state)
    await store.append("a", [Turn("user", "x")])
    assert await store.clear("a") == 1
    assert await store.clear("a") == 2
    kept = ConversationState(model="qwen3", system_prompt="Be brief.", epoch=2)
    assert await store.get_state("a") == kept
    # update_state cannot move the epoch: only clear does.
    moved = await store.update_state("a", lambda s: replace(s, epoch=99, summary="new"))
    assert moved == replace(kept, summary="new")
    assert await store.get_state("a") == replace(kept, summary="new")
    assert await store.get_state("b") == ConversationState()  # other conversations untouched


async def test_update_state_is_atomic_under_concurrency(clients: Clients) -> None:
    # Two clients: for SQLite and Redis two connections, as two processes would have.
    first, second = clients(), clients()
    calls = 0

    def increment(state: ConversationState) -> ConversationState:
        nonlocal calls
        calls += 1
        return replace(state, summary_upto=state.summary_upto + 1)

    await first.update_state("a", lambda s: replace(s, model="qwen3"))
    await asyncio.gather(
        *((first if i % 2 else second).update_state("a", increment) for i in range(50))
    )
    assert (await first.get_state("a")).summary_upto == 50
    assert await second.get_state("a") == ConversationState(summary_upto=50, model="qwen3")
    assert calls >= 50


async def test_update_state_that_changes_nothing_keeps_the_state(store: HistoryStore) -> None:
    assert await store.update_state("a", lambda s: s) == ConversationState()
    assert await store.update_state("a", lambda s: replace(s)) == ConversationState()
    await store.clear("a")  # a reset and nothing else: epoch 1
    assert await store.update_state("a", lambda s: s) == ConversationState(epoch=1)


async def test_replace_removes_and_appends_atomically(clients: Clients) -> None:
    writer, reader = clients(), clients()
    stored = await writer.append("a", [Turn("user", "q"), Turn("assistant", "r0")])
    assert stored is not None
    question, answer = stored
    seen: list[int] = []

    async def regenerate() -> None:
        nonlocal answer
        for i in range(1, 31):
            new = await writer.replace("a", [answer.id], [Turn("assistant", f"r{i}")], epoch=0)
            assert new is not None and new[0].id > answer.id
            answer = new[0]

    async def watch() -> None:
        for _ in range(60):
            seen.append(len(await reader.load("a")))
            await asyncio.sleep(0)

    await asyncio.gather(regenerate(), watch())
    assert set(seen) == {2}  # never the question alone, never two answers
    assert [(t.id, t.content) for t in await reader.load("a")] == [
        (question.id, "q"),
        (answer.id, "r30"),
    ]


async def test_open_replies_are_kept_per_conversation_and_seen_by_every_client(
    clients: Clients,
) -> None:
    writer, reader = clients(), clients()
    for store in (writer, reader):
        await store.open()
    assert await reader.open_replies() == {}
    await writer.set_open_reply("discord:1", 101)
    await writer.set_open_reply("discord:2", 201)
    await writer.set_open_reply("discord:1", 102)  # the reply went on in a new message
    assert await reader.open_replies() == {"discord:1": 102, "discord:2": 201}
    await writer.set_open_reply("discord:1", None)
    await writer.set_open_reply("discord:9", None)  # closing one never opened is fine
    assert await reader.open_replies() == {"discord:2": 201}


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
    for url in ("redis://:secret@cache:6380/2", "rediss://cache.example.com:6379/0"):
        store = open_history_store(url)
        assert isinstance(store, RedisHistoryStore) and store.url == url


# Redis: what only a shared server has (layout, other clients, crashes, connection errors).


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True)


async def test_redis_keys_are_laid_out_as_documented(redis_server: RedisServer) -> None:
    store = RedisHistoryStore(redis_server.url)
    stored = await store.append("discord:1", [Turn("user", "q", ref=7), Turn("assistant", "r")])
    await store.update_state("discord:1", lambda s: replace(s, summary="s", model="qwen3"))
    await store.set_open_reply("discord:1", 42)
    await store.close()
    assert stored is not None
    with redis_client(redis_server) as client:
        keys = sorted(client.keys("*"))
        assert keys[1:] == [
            "ollacord:open-replies",
            "ollacord:state:discord:1",
            "ollacord:turn-id",
            "ollacord:turns:discord:1",
        ]
        assert keys[0].startswith("ollacord:done:")  # the append's result, for a retry
        assert 0 < client.ttl(keys[0]) <= 600
        assert client.get(keys[0]) == json.dumps([t.id for t in stored]).replace(" ", "")
        assert client.get("ollacord:turn-id") == str(stored[1].id)
        members = client.zrange("ollacord:turns:discord:1", 0, -1, withscores=True)
        assert [score for _, score in members] == [t.id for t in stored]
        assert members[0][0].startswith(f'{stored[0].id}:{{"role": "user", "content": "q"')
        assert client.hgetall("ollacord:open-replies") == {"discord:1": "42"}
        state = client.hgetall("ollacord:state:discord:1")
        assert state["summary"] == "s" and state["model"] == "qwen3" and "epoch" not in state


async def test_redis_update_state_runs_change_again_when_another_client_wrote_first(
    redis_server: RedisServer,
) -> None:
    store = RedisHistoryStore(redis_server.url)
    seen: list[int] = []

    def increment(state: ConversationState) -> ConversationState:
        seen.append(state.summary_upto)
        if len(seen) == 1:  # another process writes between our read and our write
            with redis_client(redis_server) as other:
                other.hset("ollacord:state:a", "summary_upto", 10)
        return replace(state, summary_upto=state.summary_upto + 1)

    assert (await store.update_state("a", increment)).summary_upto == 11
    assert seen == [0, 10]  # the first result was thrown away, not written
    assert (await store.get_state("a")).summary_upto == 11
    await store.close()


async def test_redis_a_turn_that_cannot_be_stored_stores_nothing(redis_server: RedisServer) -> None:
    store = RedisHistoryStore(redis_server.url)
    await store.append("c", [Turn("user", "kept")])
    bad = Turn("assistant", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text"):
        await store.append("c", [Turn("user", "orphan"), bad])
    assert [t.content for t in await store.load("c")] == ["kept"]
    await store.close()


async def test_redis_acknowledged_turns_survive_kill_9(tmp_path: Path) -> None:
    exchanges = 250
    server = started_redis(tmp_path)
    store = RedisHistoryStore(server.url)
    await store.open()
    written: list[Turn] = []
    try:
        for i in range(exchanges):
            pair = [Turn("user", f"question {i} 🌤", ref=10**17 + i), Turn("assistant", f"{i}")]
            stored = await store.append("discord:1", pair, epoch=0)
            assert stored is not None
            written += stored
        mark = written[99].id
        state = ConversationState("what came before", mark, mark, "qwen3", "Be brief.", 0, 1.5)
        await store.update_state("discord:1", lambda _: state)
        await store.clear("discord:2")  # an epoch to keep too
        server.kill()  # SIGKILL: no shutdown, no last fsync
        server.start()  # same directory and port: it reloads the append-only file
        found = await store.load("discord:1")  # the same client reconnects by itself
        print(
            f"\nturns written and acknowledged: {len(written)}; found after kill -9: {len(found)}"
        )
        assert [(t.id, t.role, t.content, t.ref) for t in found] == [
            (t.id, t.role, t.content, t.ref) for t in written
        ]
        assert await store.get_state("discord:1") == state
        assert (await store.get_state("discord:2")).epoch == 1
        after = await store.append("discord:1", [Turn("user", "after the crash")], epoch=0)
        assert after is not None and after[0].id == written[-1].id + 1  # the counter too
    finally:
        await store.close()
        server.stop()


async def test_redis_open_on_a_refused_port_names_history_store() -> None:
    port = free_port()  # nothing listens there
    store = RedisHistoryStore(f"redis://:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(StoreError) as caught:
        await store.open()
    await store.close()
    message = str(caught.value)
    assert message.startswith(f"HISTORY_STORE points at redis://***@127.0.0.1:{port}/0")
    assert "refused the connection" in message and "hunter2" not in message
    assert message.count(". ") == 0 and message.endswith("?")  # one sentence


@pytest.mark.parametrize(
    ("password", "says"),
    [("wrong", "does not accept the password given"), (None, "asks for a password")],
)
async def test_redis_open_with_a_wrong_or_missing_password_names_history_store(
    tmp_path: Path, password: str | None, says: str
) -> None:
    server = started_redis(tmp_path, "--requirepass", "right-one")
    try:
        auth = f":{password}@" if password else ""
        store = RedisHistoryStore(f"redis://{auth}127.0.0.1:{server.port}/0")
        with pytest.raises(StoreError, match=f"^HISTORY_STORE points at .*{says}") as caught:
            await store.open()
        await store.close()
        assert "right-one" not in str(caught.value)
        assert password is None or password not in str(caught.value)
        good = RedisHistoryStore(f"redis://:right-one@127.0.0.1:{server.port}/0")
        await good.open()
        await good.close()
    finally:
        server.stop()


async def test_redis_open_on_a_database_the_server_lacks(redis_server: RedisServer) -> None:
    store = RedisHistoryStore(f"redis://127.0.0.1:{redis_server.port}/99")
    with pytest.raises(StoreError, match=r"^HISTORY_STORE .* no such database number"):
        await store.open()
    await store.close()


async def test_redis_open_with_tls_on_a_server_without_it(redis_server: RedisServer) -> None:
    store = RedisHistoryStore(f"rediss://127.0.0.1:{redis_server.port}/0")
    # The server takes the TLS hello for a command and waits for the rest of it.
    with pytest.raises(StoreError, match=r"^HISTORY_STORE .*within 5 s.*speaks TLS"):
        await store.open()
    await store.close()


async def test_redis_ping_fails_once_the_server_is_gone(redis_server: RedisServer) -> None:
    store = RedisHistoryStore(redis_server.url)
    await store.open()
    await store.ping()
    redis_server.stop()
    # Every call of a running store fails the same way: a StoreError saying what is wrong.
    with pytest.raises(StoreError, match="refused the connection") as caught:
        await store.ping()
    assert isinstance(caught.value.__cause__, redis.RedisError)
    with pytest.raises(StoreError, match="refused the connection"):
        await store.load("c")
    with pytest.raises(StoreError, match="refused the connection"):
        await store.append("c", [Turn("user", "hi")])
    await store.close()


async def test_redis_warns_when_the_server_keeps_no_append_only_file(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisHistoryStore(redis_server.url)
    await store.open()
    assert "history_store_not_durable" not in caplog.text  # the tests' servers keep one
    with redis_client(redis_server) as client:
        client.config_set("appendonly", "no")
    await store.open()
    assert "event=history_store_not_durable" in caplog.text
    await store.close()


# HISTORY_STORE itself.


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:p%40ss@cache:6380/3",
        "redis://user:pass@cache:6379/0",
        "rediss://cache.example.com:6380/1",
        "redis://cache",
        "redis://[::1]:6379/0",
    ],
)
def test_history_store_takes_redis_urls(url: str) -> None:
    assert Settings.from_env({"HISTORY_STORE": url}).history_store == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres://me:secret@db/x", "must be sqlite:///path/to/file.db, redis://"),
        ("redis://:secret@cache:port/0", "a port from 1 to 65535"),
        ("redis://:secret@cache:0/0", "a port from 1 to 65535"),
        ("redis://:sec/ret@cache:6379/0", "%2F"),
        ("redis://:secret@/0", "needs a host"),
        ("redis://:secret@cache:6379/zero", "database number"),
        ("redis://:secret@cache:6379/0?ssl_cert_reqs=none", "no ?options"),
    ],
)
def test_history_store_rejects_bad_redis_urls_without_showing_the_password(
    url: str, says: str
) -> None:
    with pytest.raises(ConfigError, match="HISTORY_STORE") as caught:
        Settings.from_env({"HISTORY_STORE": url})
    assert says in str(caught.value)
    assert "secret" not in str(caught.value) and "ret@" not in str(caught.value)


async def test_redis_a_write_sent_again_after_its_reply_was_lost_is_made_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisHistoryStore(redis_server.url)
    # What a retry after a dropped reply does: the same call, with the same id, once more.
    monkeypatch.setattr(RedisHistoryStore, "_done", staticmethod(lambda: "ollacord:done:fixed"))
    first = await store.append("a", [Turn("user", "q"), Turn("assistant", "r")], epoch=0)
    again = await store.append("a", [Turn("user", "q"), Turn("assistant", "r")], epoch=0)
    assert first is not None and again is not None
    assert [t.id for t in again] == [t.id for t in first]
    assert [t.content for t in await store.load("a")] == ["q", "r"]
    monkeypatch.setattr(RedisHistoryStore, "_done", staticmethod(lambda: "ollacord:done:reset"))
    assert await store.clear("a") == 1
    assert await store.clear("a") == 1
    assert (await store.get_state("a")).epoch == 1
    await store.close()
