"""The Ollama client against the fake server, without Discord: streaming, errors, timeouts."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import aiohttp
import aiohttp.client_proto
import pytest

from bot.ollama import (
    ChatChunk,
    ModelNotFound,
    OllamaBusy,
    OllamaClient,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
    model_matches,
)
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import free_port

USER = [{"role": "user", "content": "hi"}]


async def collect(
    client: OllamaClient, model: str = "llama3.2", **kwargs: object
) -> list[ChatChunk]:
    return [chunk async for chunk in client.chat(model, USER, **kwargs)]  # type: ignore[arg-type]


@pytest.fixture
async def client(fake_ollama: FakeOllama):  # type: ignore[no-untyped-def]
    c = OllamaClient(fake_ollama.url, connect_timeout=2, read_timeout=2, busy_retry_delays=())
    yield c
    await c.close()


async def test_stream_yields_every_chunk_and_ends_with_done(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    fake_ollama.queue(Reply(tokens=["The", " sky", " is blue & <bright> 🌤"]))
    chunks = await collect(client)
    assert "".join(c.content for c in chunks) == "The sky is blue & <bright> 🌤"
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    assert chunks[-1].metrics["eval_count"] == 3
    assert not any(c.done for c in chunks[:-1])


@pytest.mark.parametrize("write_size", [1, 2, 3, 7])
async def test_lines_and_multibyte_characters_split_across_reads(
    client: OllamaClient, fake_ollama: FakeOllama, write_size: int
) -> None:
    fake_ollama.queue(Reply(tokens=["héllo", " wörld", " 🌤🌧", " 日本語"], write_size=write_size))
    chunks = await collect(client)
    assert "".join(c.content for c in chunks) == "héllo wörld 🌤🌧 日本語"


async def test_a_line_longer_than_aiohttp_readline_limit(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    big = "x" * 300_000  # > 128 KiB, aiohttp's default readline cap
    fake_ollama.queue(Reply(tokens=[big, "!"]))
    chunks = await collect(client)
    assert "".join(c.content for c in chunks) == big + "!"


async def test_final_chunk_content_is_kept(client: OllamaClient, fake_ollama: FakeOllama) -> None:
    fake_ollama.queue(Reply(tokens=["held"], final_content=" back"))
    chunks = await collect(client)
    assert "".join(c.content for c in chunks) == "held back"


async def test_options_keep_alive_and_think_are_passed_through(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    await collect(client, options={"temperature": 0.2}, keep_alive="10m", think=False)
    request = fake_ollama.chat_requests[-1]
    assert request["options"] == {"temperature": 0.2}
    assert request["keep_alive"] == "10m"
    assert request["think"] is False
    assert request["stream"] is True


@pytest.mark.parametrize("legacy", [False, True])
async def test_model_not_found_in_either_wording(legacy: bool) -> None:
    with FakeOllama(models=(), legacy_not_found=legacy) as fake:
        client = OllamaClient(fake.url)
        with pytest.raises(ModelNotFound) as info:
            await collect(client)
        await client.close()
    assert info.value.model == "llama3.2"


async def test_refused_connection_is_unavailable() -> None:
    port = free_port()
    client = OllamaClient(f"http://127.0.0.1:{port}")
    with pytest.raises(OllamaUnavailable, match="connection refused"):
        await collect(client)
    await client.close()


async def test_400_is_a_request_error_with_the_servers_message(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    with pytest.raises(OllamaRequestError) as info:
        await collect(client, keep_alive="300x")  # not a Go duration
    assert info.value.status == 400
    assert "time: " in info.value.message


async def test_wrong_option_type_is_a_500(client: OllamaClient) -> None:
    with pytest.raises(OllamaRequestError) as info:
        await collect(client, options={"temperature": "hot"})
    assert info.value.status == 500
    assert info.value.message == 'option "temperature" must be of type float32'


async def test_503_is_retried_then_raised(fake_ollama: FakeOllama) -> None:
    busy = Reply(
        status=503,
        status_message="server busy, please try again.  maximum pending requests exceeded",
    )
    fake_ollama.queue(busy, busy, busy)
    client = OllamaClient(fake_ollama.url, busy_retry_delays=(0.01, 0.01))
    with pytest.raises(OllamaBusy):
        await collect(client)
    await client.close()
    assert len([r for r in fake_ollama.requests if r.path == "/api/chat"]) == 3


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(tokens=["a", "b"], error_after=1), "model_error"),
        (Reply(tokens=["a", "b"], done=False), "incomplete"),
        (Reply(tokens=["a", "b", "c"], drop_after=1), "dropped"),
        (Reply(tokens=["a", "b", "c"], drop_after=1, drop_mid_line=True), "dropped"),
    ],
)
async def test_stream_interruptions_are_classified(
    client: OllamaClient, fake_ollama: FakeOllama, reply: Reply, kind: str
) -> None:
    fake_ollama.queue(reply)
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for chunk in client.chat("llama3.2", USER):
            received.append(chunk.content)
    assert info.value.kind == kind
    assert "".join(received).startswith("a")  # the text before the break was delivered


async def test_a_hung_server_hits_the_idle_read_timeout(fake_ollama: FakeOllama) -> None:
    # Tested here, outside SimCord, where timers are real (docs/testing.md#trap-timeouts).
    fake_ollama.queue(Reply(hang=True))
    client = OllamaClient(fake_ollama.url, read_timeout=0.3)
    with pytest.raises(OllamaTimeout) as info:
        await collect(client)
    await client.close()
    assert info.value.started is False


async def test_a_server_going_silent_mid_answer_hits_the_idle_read_timeout(
    fake_ollama: FakeOllama,
) -> None:
    # The answer has started, then nothing more: the bot's own watch (not aiohttp's per-packet
    # timer) ends the read, and the connection is closed so the server can stop generating.
    fake_ollama.queue(Reply(tokens=["a", "b", "c", "d"], hang_after=2))
    client = OllamaClient(fake_ollama.url, read_timeout=0.3)
    received: list[str] = []
    with pytest.raises(OllamaTimeout) as info:
        async with asyncio.timeout(10):  # without the watch it would wait forever
            async for chunk in client.chat("llama3.2", USER):
                received.append(chunk.content)
    await client.close()
    assert info.value.started is True
    assert "".join(received) == "ab"
    assert await asyncio.to_thread(fake_ollama.wait_for, lambda f: f.cancelled == 1)


async def test_with_a_read_beat_tokens_that_arrive_together_are_one_chunk(
    fake_ollama: FakeOllama,
) -> None:
    tokens = [f"w{i} " for i in range(40)]
    fake_ollama.queue(Reply(tokens=tokens, token_delay=0.005))
    client = OllamaClient(fake_ollama.url, read_beat=0.05)
    chunks = await collect(client)
    await client.close()
    assert "".join(c.content for c in chunks) == "".join(tokens)
    assert sum(c.tokens for c in chunks) == len(tokens)
    assert len(chunks) < len(tokens) / 3  # 200 ms of tokens in a handful of reads
    assert chunks[-1].done and chunks[-1].metrics["eval_count"] == len(tokens)


async def test_with_a_read_beat_the_socket_is_read_once_a_beat_not_once_a_token(
    fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted where aiohttp receives what the socket gave: each call is one recv, and each
    # costs a wake-up and a parse even when nobody reads aiohttp's buffer yet.
    received = 0
    original = aiohttp.client_proto.ResponseHandler.data_received

    def data_received(self: aiohttp.client_proto.ResponseHandler, data: bytes) -> None:
        nonlocal received
        received += bool(data)  # aiohttp itself calls it with b"" to resume its parser
        original(self, data)

    monkeypatch.setattr(aiohttp.client_proto.ResponseHandler, "data_received", data_received)
    tokens = [f"w{i} " for i in range(60)]  # one packet every 5 ms for 300 ms
    fake_ollama.queue(Reply(tokens=tokens, token_delay=0.005))
    client = OllamaClient(fake_ollama.url, read_beat=0.05)
    async with asyncio.timeout(10):  # a socket never read again would hang here
        chunks = await collect(client)
    await client.close()
    assert "".join(c.content for c in chunks) == "".join(tokens)
    assert received < len(tokens) / 3  # about one recv per 50 ms beat


async def test_a_connection_read_on_a_beat_is_reused_afterwards(fake_ollama: FakeOllama) -> None:
    # Between beats the socket is left unread; whether the stream ends or is stopped during
    # a beat, the connection it leaves in the pool reads normally again.
    client = OllamaClient(fake_ollama.url, read_beat=0.05)
    fake_ollama.queue(Reply(tokens=[f"t{i} " for i in range(100)], token_delay=0.005))
    stream = client.chat("llama3.2", USER)
    async with aclosing(stream):
        async for chunk in stream:
            if chunk.content:
                break  # stopped by the Stop button, say
    # Stopped while waiting for the beat (the socket paused): cancelled mid-wait.
    fake_ollama.queue(Reply(tokens=[f"u{i} " for i in range(100)], token_delay=0.005))
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in client.chat("llama3.2", USER):
            if chunk.content:
                first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    await asyncio.sleep(0.02)  # inside the next 50 ms beat
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(3):
        fake_ollama.queue(Reply(tokens=["a ", "b ", "c"], token_delay=0.02))
        async with asyncio.timeout(10):
            chunks = await collect(client)
        assert "".join(c.content for c in chunks) == "a b c"
    await client.close()


@pytest.mark.parametrize("mid_line", [False, True], ids=["between-lines", "mid-line"])
async def test_tokens_that_arrived_before_the_connection_broke_are_not_lost(
    fake_ollama: FakeOllama, mid_line: bool
) -> None:
    # The reader is busy elsewhere (say, waiting for Discord) while the last tokens arrive
    # and the connection breaks: aiohttp then has both the bytes and the error; the bytes
    # come first.
    fake_ollama.queue(
        Reply(tokens=["Partial", " answer", " here"], drop_after=2, drop_mid_line=mid_line)
    )
    client = OllamaClient(fake_ollama.url)
    received = ""
    with pytest.raises(StreamInterrupted):
        async for chunk in client.chat("llama3.2", USER):
            received += chunk.content
            await asyncio.sleep(0.3)
    await client.close()
    assert received == "Partial answer"


async def test_slow_tokens_within_the_idle_timeout_are_fine(fake_ollama: FakeOllama) -> None:
    # The idle timeout restarts with every read: a long reply is never cut by it.
    fake_ollama.queue(Reply(tokens=["a", "b", "c", "d"], token_delay=0.15))
    client = OllamaClient(fake_ollama.url, read_timeout=0.5)
    chunks = await collect(client)
    await client.close()
    assert "".join(c.content for c in chunks) == "abcd"


async def test_a_cold_model_load_holds_back_headers_without_failing(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    fake_ollama.queue(Reply(tokens=["warm"], load_delay=0.3))
    chunks = await collect(client)
    assert chunks[0].content == "warm"


async def test_stopping_early_closes_the_stream_so_ollama_stops_generating(
    client: OllamaClient, fake_ollama: FakeOllama
) -> None:
    fake_ollama.queue(Reply(tokens=[f"t{i}" for i in range(200)], token_delay=0.01))
    stream = client.chat("llama3.2", USER)
    seen = ""
    async with aclosing(stream):
        async for chunk in stream:
            seen += chunk.content
            if "t3" in seen:  # tokens read together come as one chunk
                break
    assert await asyncio.to_thread(fake_ollama.wait_for, lambda f: f.cancelled == 1)


async def test_list_models_and_version(client: OllamaClient) -> None:
    assert await client.list_models() == ["llama3.2:latest"]
    assert await client.version()


@pytest.mark.parametrize(
    ("configured", "available", "match"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("Llama3.2", "llama3.2:latest", True),
        ("llama3.2:3b", "llama3.2:latest", False),
        ("hf.co/org/model", "hf.co/org/model:latest", True),
        ("qwen3:8b", "qwen3:8b", True),
    ],
)
def test_model_names_compare_like_ollama(configured: str, available: str, match: bool) -> None:
    assert model_matches(configured, available) is match
