"""Several Ollama backends behind one pool, against real fake servers on 127.0.0.1: routing by
conversation and model, failover before the first byte, no retry after text, probes, shared
slots, pulls on every backend, the union of model lists."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import pytest

from bot.metrics import Metrics
from bot.ollama import ModelNotFound, OllamaRequestError, OllamaUnavailable, StreamInterrupted
from bot.ollama_pool import OllamaPool
from tests.conftest import until
from tests.fake_ollama import FakeOllama, Reply

USER = [{"role": "user", "content": "hi"}]


async def quick(_seconds: float) -> None:
    """The pool's waits (for a slot, between probes), shortened: the tests wait for events."""
    await asyncio.sleep(0.01)


async def patient(_seconds: float) -> None:
    """Waits long enough that a backend marked down stays down while the test looks."""
    await asyncio.sleep(30)


def make_pool(*fakes: FakeOllama, slots: int = 1, metrics: Metrics | None = None) -> OllamaPool:
    return OllamaPool(
        [(fake.url, slots) for fake in fakes],
        connect_timeout=2,
        read_timeout=5,
        clock=time.monotonic,
        sleep=quick,
        metrics=metrics,
    )


async def answer(
    pool: OllamaPool, route: str | None = None, model: str = "llama3.2", text: str = "hi"
) -> str:
    messages = [{"role": "user", "content": text}]
    return "".join([c.content async for c in pool.chat(model, messages, route=route)])


def slow_when_asked(*fakes: FakeOllama) -> None:
    """Questions reading "slow" get a five-token answer that takes a second."""
    for fake in fakes:
        fake.responder = lambda messages: (
            Reply(tokens=["z"] * 5, token_delay=0.2) if messages[-1]["content"] == "slow" else None
        )


def chats(fake: FakeOllama) -> int:
    return len(fake.chat_requests)


@pytest.fixture
def two() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    with FakeOllama() as a, FakeOllama() as b:
        yield a, b


@pytest.fixture
async def pool(two: tuple[FakeOllama, FakeOllama]) -> AsyncIterator[OllamaPool]:
    p = make_pool(*two)
    yield p
    await p.close()


async def test_a_conversation_stays_on_the_backend_that_served_it(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    for _ in range(4):
        assert await answer(pool, route="channel-1") == "You said: hi"
    # Every turn of channel-1 went to one backend: its prompt cache holds the conversation.
    assert sorted((chats(a), chats(b))) == [0, 4]


async def test_a_busy_backend_does_not_hold_its_conversation_while_another_has_room(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    await answer(pool, route="c1")
    home = a if chats(a) else b
    slow_when_asked(a, b)
    # Another conversation occupies c1's backend (its only slot): c1 goes elsewhere at once
    # rather than waiting a second for its cache.
    blocker = asyncio.create_task(answer(pool, route="c2", text="slow"))
    assert await until(lambda: bool(a.active or b.active))
    busy = a if a.active else b
    free = b if busy is a else a
    before = chats(free)
    assert await answer(pool, route="c1") == "You said: hi"
    assert chats(free) == before + 1
    assert not blocker.done()
    assert await blocker == "zzzzz"
    if busy is not home:
        # c1's own backend was free: it stayed there.
        assert free is home


async def test_two_streams_at_once_use_both_backends_and_a_third_waits_for_a_slot(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    slow_when_asked(a, b)
    most_at_once = 0

    async def watch() -> None:
        nonlocal most_at_once
        while True:
            most_at_once = max(most_at_once, a.active, b.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(answer(pool, route=f"c{i}", text="slow") for i in range(3)))
    watcher.cancel()
    assert results == ["zzzzz"] * 3
    assert chats(a) >= 1 and chats(b) >= 1 and chats(a) + chats(b) == 3
    # The third waited for a slot rather than queueing inside a busy Ollama.
    assert a.waiting == b.waiting == 0
    # One slot each: neither backend ever ran two generations at once.
    assert most_at_once == 1


async def test_a_model_only_one_backend_has_goes_to_that_backend() -> None:
    with FakeOllama(models=("llama3.2",)) as a, FakeOllama(models=("qwen3",)) as b:
        pool = make_pool(a, b)
        try:
            for i in range(3):
                assert await answer(pool, route=f"c{i}", model="qwen3") == "You said: hi"
                assert await answer(pool, route=f"c{i}", model="llama3.2") == "You said: hi"
        finally:
            await pool.close()
    assert [r["model"] for r in a.chat_requests] == ["llama3.2"] * 3
    assert [r["model"] for r in b.chat_requests] == ["qwen3"] * 3


async def test_a_stale_model_list_sends_the_request_on_to_the_backend_that_has_it() -> None:
    with FakeOllama(models=("llama3.2",)) as a, FakeOllama(models=("llama3.2",)) as b:
        pool = make_pool(a, b)
        try:
            await answer(pool, route="c")  # both lists are read now
            home = a if chats(a) else b
            home.remove_model("llama3.2")  # deleted behind the pool's back
            assert await answer(pool, route="c") == "You said: hi"
        finally:
            await pool.close()
    assert chats(a) + chats(b) == 2  # the 404 was not a generation


async def test_a_stopped_backend_fails_over_with_no_difference_and_comes_back_after_a_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    a = FakeOllama().start()
    port = a.port
    with FakeOllama() as b:
        pool = make_pool(a, b, metrics=metrics)
        try:
            # Warm both: the conversation's home is whichever served it.
            await answer(pool, route="c")
            a.stop()  # the server is gone: connections are refused
            before = chats(b)
            for i in range(3):
                assert await answer(pool, route=f"d{i}") == "You said: hi"
            assert chats(b) == before + 3
            down = [x for x in pool.backends if not x.up]
            assert [x.url for x in down] == [a.url]
            assert metrics.backend_up.labels(backend=a.url)._value.get() == 0
            assert metrics.backend_failovers._value.get() >= 1
            assert "event=backend_down" in caplog.text
            # A probe asks for its version until it answers again.
            restarted = FakeOllama(port=port).start()
            try:
                assert await until(lambda: all(x.up for x in pool.backends))
                assert any(r.path == "/api/version" for r in restarted.requests)
                assert metrics.backend_up.labels(backend=a.url)._value.get() == 1
                # Back in the rotation: two streams at once use both again.
                slow_when_asked(restarted, b)
                await asyncio.gather(
                    answer(pool, route="e1", text="slow"), answer(pool, route="e2", text="slow")
                )
                assert chats(restarted) >= 1
            finally:
                restarted.stop()
        finally:
            await pool.close()


async def test_a_5xx_before_the_first_byte_fails_over_but_a_bad_request_does_not(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    await answer(pool, route="c")
    home, other = (a, b) if chats(a) else (b, a)
    home.queue(Reply(status=500, status_message="llama runner process has terminated"))
    assert await answer(pool, route="c") == "You said: hi"
    assert chats(other) == 1
    # It answered: a crashed runner restarts on the next request, the server is not down.
    assert all(backend.up for backend in pool.backends)
    # A request the server rejects as malformed would be rejected anywhere: no second try.
    with pytest.raises(OllamaRequestError):
        await answer(pool, route="c", model="bad::name")
    assert sum(r.path == "/api/chat" for f in (a, b) for r in f.requests) == 4


async def test_a_proxy_saying_bad_gateway_marks_its_backend_down(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    pool.sleep = patient
    await answer(pool, route="c")
    home = a if chats(a) else b
    home.queue(
        Reply(
            status=502,
            error_body=b"<html><h1>502 Bad Gateway</h1></html>",
            error_content_type="text/html",
        )
    )
    assert await answer(pool, route="c") == "You said: hi"
    assert [x.up for x in pool.backends] == [home is b, home is a]


async def test_a_stream_broken_after_text_is_not_retried(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    for fake in two:
        fake.queue(Reply(tokens=["one", " two", " three"], drop_after=2))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async with aclosing(pool.chat("llama3.2", USER, route="c")) as chunks:
            async for chunk in chunks:
                seen.append(chunk.content)
    assert "".join(seen) == "one two"
    # The user saw "one two": another backend starting over would repeat it.
    assert chats(a) + chats(b) == 1


async def test_every_backend_down_gives_the_plain_error_of_the_first(
    two: tuple[FakeOllama, FakeOllama],
) -> None:
    a, b = two
    pool = make_pool(a, b)
    a.stop()
    b.stop()
    try:
        with pytest.raises(OllamaUnavailable) as info:
            await answer(pool, route="c")
        assert a.url in str(info.value) or b.url in str(info.value)
    finally:
        await pool.close()


async def test_a_model_no_backend_has_is_model_not_found() -> None:
    with FakeOllama(models=("llama3.2",)) as a, FakeOllama(models=("llama3.2",)) as b:
        pool = make_pool(a, b)
        try:
            with pytest.raises(ModelNotFound):
                await answer(pool, model="qwen3")
        finally:
            await pool.close()


async def test_model_lists_are_the_union_of_all_backends() -> None:
    with (
        FakeOllama(models=("llama3.2", "qwen3")) as a,
        FakeOllama(models=("qwen3", "mistral")) as b,
    ):
        pool = make_pool(a, b)
        try:
            names = await pool.list_models()
            assert sorted(n.split(":")[0] for n in names) == ["llama3.2", "mistral", "qwen3"]
            b.stop()  # one down: the other's list still answers
            assert sorted(n.split(":")[0] for n in await pool.list_models()) == [
                "llama3.2",
                "qwen3",
            ]
        finally:
            await pool.close()


async def test_a_pull_runs_on_every_backend_with_one_progress() -> None:
    with FakeOllama(models=()) as a, FakeOllama(models=()) as b:
        pool = make_pool(a, b)
        try:
            steps = [p async for p in pool.pull("mistral")]
            # Each backend's layer is named apart, so one tracker sums both into one bar.
            digests = {p.digest for p in steps if p.digest}
            assert {d.split(":", 1)[0] for d in digests} == {"0", "1"}
            assert [p.status for p in steps].count("success") == 2
            for backend in pool.backends:
                assert await backend.client.list_models() == ["mistral:latest"]
        finally:
            await pool.close()


async def test_a_pull_that_fails_on_one_backend_fails_after_the_other_finished() -> None:
    with (
        FakeOllama(models=(), pullable=("mistral",)) as a,
        FakeOllama(models=(), pullable=()) as b,
    ):
        pool = make_pool(a, b)
        try:
            with pytest.raises(OllamaRequestError, match="file does not exist"):
                async for _ in pool.pull("mistral"):
                    pass
            assert await pool.backends[0].client.list_models() == ["mistral:latest"]
        finally:
            await pool.close()


async def test_describe_names_every_backend_and_its_state(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    await answer(pool, route="c")
    lines = await pool.describe()
    assert len(lines) == 2
    assert lines[0].startswith(a.url) and lines[1].startswith(b.url)
    assert all("up" in line and "/1 busy here" in line for line in lines)


async def test_a_backend_dying_within_its_first_line_fails_over(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    pool.sleep = patient
    await answer(pool, route="c")
    home, other = (a, b) if chats(a) else (b, a)
    # Half of the first NDJSON line, then the connection is gone: no text reached anyone.
    home.queue(Reply(tokens=["hello", " world"], drop_after=0, drop_mid_line=True))
    assert await answer(pool, route="c") == "You said: hi"
    assert chats(other) == 1
    assert [x.up for x in pool.backends] == [home is b, home is a]


async def test_a_runner_error_line_before_any_text_fails_over_without_marking_down(
    pool: OllamaPool, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    await answer(pool, route="c")
    home, other = (a, b) if chats(a) else (b, a)
    home.queue(
        Reply(tokens=["x"], error_after=0, error_message="llama runner process has terminated")
    )
    assert await answer(pool, route="c") == "You said: hi"
    assert chats(other) == 1
    assert all(x.up for x in pool.backends)
