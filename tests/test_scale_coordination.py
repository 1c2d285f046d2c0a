"""Several bot processes sharing one Redis, in one test process: each "process" is its own
:class:`Services` (engine, pool, store, coordination) on its own Redis connections, as
``python -m bot`` builds them, against a real redis-server and the fake Ollama."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.app import Services
from bot.console import ConsoleSink
from bot.coordination import coordination_for
from bot.discord_scheduler import SHARED_BURST, SHARED_RATE, DiscordScheduler
from bot.rate_limits import DISCORD_GLOBAL_LIMIT
from bot.turn import UserMessage
from tests.conftest import settings_for, until
from tests.fake_ollama import FakeOllama, Reply
from tests.redis_server import RedisServer, started_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = started_redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def two(
    fake_ollama: FakeOllama, redis_server: RedisServer
) -> AsyncIterator[tuple[Services, Services]]:
    """Two processes' services on one Redis and one backend that runs one generation at a
    time (``#1``), though the server itself would take four."""
    fake_ollama.num_parallel = 4
    settings = settings_for(
        fake_ollama, {"HISTORY_STORE": redis_server.url, "OLLAMA_URL": f"{fake_ollama.url}#1"}
    )
    a, b = Services.build(settings), Services.build(settings)
    a.engine.leases.process, b.engine.leases.process = "process-a", "process-b"
    for services in (a, b):
        await services.store.open()
    yield a, b
    for services in (a, b):
        await services.close()


def slow(messages: list[dict[str, str]]) -> Reply | None:
    if messages[-1]["content"].endswith("slowly"):
        return Reply(tokens=[f" t{i}" for i in range(20)], token_delay=0.03)
    return None


async def ask(services: Services, conversation: str, text: str) -> str:
    out = io.StringIO()
    await services.engine.respond(conversation, UserMessage(text), ConsoleSink(out))
    return out.getvalue()


async def test_two_processes_never_interleave_a_conversation(
    two: tuple[Services, Services], fake_ollama: FakeOllama
) -> None:
    a, b = two
    fake_ollama.responder = slow
    first = asyncio.create_task(ask(a, "discord:1", "count slowly"))
    assert await until(lambda: fake_ollama.active == 1)
    # The same conversation arrives at the other process (a rolling restart): it waits for
    # the first turn to end, then answers with that exchange in its prompt.
    second = asyncio.create_task(ask(b, "discord:1", "and then?"))
    await asyncio.sleep(0.2)
    assert len(fake_ollama.chat_requests) == 1
    await first
    await second
    [_, later] = fake_ollama.chat_requests
    assert [m["content"] for m in later["messages"]] == [
        "count slowly",
        "".join(f" t{i}" for i in range(20)).strip(),
        "and then?",
    ]
    turns = await b.store.load("discord:1")
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]


async def test_other_conversations_do_not_wait_for_a_lease(
    two: tuple[Services, Services], fake_ollama: FakeOllama, redis_server: RedisServer
) -> None:
    a, b = two
    fake_ollama.responder = slow
    first = asyncio.create_task(ask(a, "discord:1", "count slowly"))
    assert await until(lambda: fake_ollama.active == 1)
    # One slot on the backend for both processes: the second conversation waits for the
    # slot (not for the lease), and the backend never runs two at once.
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, fake_ollama.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    assert (await ask(b, "discord:2", "hello")).startswith("You said: hello")
    await first
    watcher.cancel()
    assert most == 1
    assert len(fake_ollama.chat_requests) == 2
    # Nothing is left held: no lease, no slot.
    shared = coordination_for(redis_server.url)
    try:
        assert await shared.lease.holder("conversation:discord:1") is None
        assert await shared.slots.in_use(f"backend:{fake_ollama.url}") == 0
    finally:
        await shared.close()


async def test_two_schedulers_stay_under_discords_global_limit_together(
    redis_server: RedisServer,
) -> None:
    """Each process's own window allows 45 requests per second; with the shared budget the
    two together keep within Discord's 50 in every second."""
    stamps: list[float] = []
    coordinations = [coordination_for(redis_server.url) for _ in range(2)]
    schedulers = [
        DiscordScheduler(
            time.monotonic,
            edit_interval=1.0,
            shared=c.budget("discord-rest", SHARED_RATE, SHARED_BURST),
            share=0.5,
        )
        for c in coordinations
    ]

    async def call(scheduler: DiscordScheduler) -> None:
        await scheduler.admit()
        stamps.append(time.monotonic())

    try:
        await asyncio.gather(*(call(s) for s in schedulers for _ in range(90)))
    finally:
        for c in coordinations:
            await c.close()
    stamps.sort()
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert len(stamps) == 180
    assert busiest <= DISCORD_GLOBAL_LIMIT
    # Without it, the two local windows alone would have let 90 through in the first second.
    assert sum(1 for t in stamps if t < stamps[0] + 1.0) < 2 * 45


async def test_a_message_both_processes_receive_is_handled_by_one(
    two: tuple[Services, Services], redis_server: RedisServer
) -> None:
    """During a rolling restart the old and the new process both receive a shard's events."""
    a, b = two
    assert await a.first_to_see("message:1") is True
    assert await b.first_to_see("message:1") is False
    assert await a.first_to_see("message:1") is True  # asked again (a retry): still its own
    assert await b.first_to_see("message:2") is True
    # Redis unreachable: answered anyway (twice at worst, never not at all).
    redis_server.stop()
    assert await a.first_to_see("message:3") is True
    assert await b.first_to_see("message:3") is True
