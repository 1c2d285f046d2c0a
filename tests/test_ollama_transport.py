"""One transport, one translation: the same failure is the same error for every endpoint.

Each test runs every client operation (chat, complete, show, tags, version, pull, preload)
against the same misbehaving server and expects the same error class, and the endpoint that
failed in the error's text. Servers are real: the fake Ollama, or a tiny asyncio server on
127.0.0.1 speaking raw bytes where a real Ollama cannot be made to misbehave that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bot import ollama, ollama_errors
from bot.ollama import (
    ModelNotFound,
    OllamaBusy,
    OllamaClient,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
)
from bot.ollama_transport import OllamaTransport
from tests.fake_ollama import FakeOllama
from tests.helpers import free_port

USER = [{"role": "user", "content": "hi"}]


async def _chat(client: OllamaClient) -> object:
    return [chunk async for chunk in client.chat("llama3.2", USER)]


async def _pull(client: OllamaClient) -> object:
    return [progress async for progress in client.pull("llama3.2")]


# name -> (the operation, run to its end; the endpoint it uses)
OPERATIONS: dict[str, tuple[Callable[[OllamaClient], Awaitable[object]], str]] = {
    "chat": (_chat, "/api/chat"),
    "complete": (lambda c: c.complete("llama3.2", USER), "/api/chat"),
    "show": (lambda c: c.context_length("llama3.2"), "/api/show"),
    "tags": (lambda c: c.list_models(), "/api/tags"),
    "version": (lambda c: c.version(), "/api/version"),
    "pull": (_pull, "/api/pull"),
    "preload": (lambda c: c.preload("llama3.2"), "/api/chat"),
}
EVERY_OPERATION = pytest.mark.parametrize("operation", list(OPERATIONS))


async def fail(url: str, operation: str, **client_options: Any) -> OllamaError:
    """Run ``operation`` against ``url``; return the OllamaError it raised."""
    run, _ = OPERATIONS[operation]
    client = OllamaClient(url, busy_retry_delays=(), **client_options)
    try:
        with pytest.raises(OllamaError) as info:
            await run(client)
    finally:
        await client.close()
    return info.value


@asynccontextmanager
async def raw_server(answer: bytes | None, *, pause: float = 0.0) -> AsyncIterator[str]:
    """An HTTP "server" that reads each request, then writes ``answer`` and closes the
    connection (``pause`` seconds after writing it). ``None``: it never answers."""
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            if answer is None:
                await stop.wait()
            else:
                writer.write(answer)
                await writer.drain()
                # Let the client read what was sent before the close reaches it.
                await asyncio.sleep(pause)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up first
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.close()
        await server.wait_closed()


def http_200(content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


# --- the same transport failure, the same error ----------------------------------------------


@EVERY_OPERATION
async def test_connection_refused_is_unavailable_everywhere(operation: str) -> None:
    port = free_port()
    error = await fail(f"http://127.0.0.1:{port}", operation)
    assert type(error) is OllamaUnavailable
    assert error.reason == "connection refused"
    endpoint = OPERATIONS[operation][1]
    assert str(error) == (
        f"cannot reach Ollama at http://127.0.0.1:{port} for {endpoint}: connection refused"
    )


@EVERY_OPERATION
async def test_closed_before_answering_is_unavailable_everywhere(operation: str) -> None:
    async with raw_server(b"") as url:
        error = await fail(url, operation)
    assert type(error) is OllamaUnavailable
    assert error.reason == "it closed the connection without answering"
    assert OPERATIONS[operation][1] in str(error)


@EVERY_OPERATION
async def test_cut_after_the_first_bytes_is_dropped_everywhere(operation: str) -> None:
    # Headers and the first bytes of a chunked body, then the connection closes mid-line.
    partial = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + b'{"mod' + b"\r\n"
    )
    async with raw_server(partial, pause=0.1) as url:
        error = await fail(url, operation)
    assert type(error) is StreamInterrupted
    assert error.kind == "dropped"
    assert error.endpoint == OPERATIONS[operation][1]


@pytest.mark.parametrize("operation", ["chat", "pull"])
async def test_an_ndjson_stream_ending_mid_line_is_dropped(operation: str) -> None:
    # A clean end of the body, but the last line has no "\n": the server was cut off.
    body = b'{"status":"pulling manifest"}\n{"model":"llama3.2","done":false}'
    async with raw_server(http_200("application/x-ndjson", body)) as url:
        error = await fail(url, operation)
    assert type(error) is StreamInterrupted
    assert error.kind == "dropped"


@EVERY_OPERATION
async def test_a_hung_server_is_a_timeout_everywhere(operation: str) -> None:
    async with raw_server(None) as url:
        error = await fail(url, operation, read_timeout=0.3)
    assert type(error) is OllamaTimeout
    assert error.started is False
    assert error.seconds == 0.3
    assert OPERATIONS[operation][1] in str(error)


@EVERY_OPERATION
async def test_an_answer_that_is_not_json_is_malformed_everywhere(operation: str) -> None:
    body = b"<html><body>Welcome to nginx!</body></html>\n"
    async with raw_server(http_200("text/html", body)) as url:
        error = await fail(url, operation)
    assert type(error) is StreamInterrupted
    assert error.kind == "malformed"
    assert "Welcome to nginx" in error.detail


@EVERY_OPERATION
async def test_a_non_json_404_names_the_endpoint_everywhere(
    operation: str, fake_ollama: FakeOllama
) -> None:
    # Under an unknown prefix every path is a router 404 with a text/plain body.
    base = f"{fake_ollama.url}/not-ollama"
    error = await fail(base, operation)
    endpoint = OPERATIONS[operation][1]
    assert type(error) is OllamaRequestError
    assert error.status == 404
    assert error.message == (
        f"404 page not found (is {base} an Ollama server? {endpoint} does not exist)"
    )
    assert str(error).startswith(f"Ollama at {base} answered 404 on {endpoint}: ")


async def test_a_404_from_api_show_names_api_show(fake_ollama: FakeOllama) -> None:
    base = f"{fake_ollama.url}/v1"
    error = await fail(base, "show")
    assert str(error) == (
        f"Ollama at {base} answered 404 on /api/show: 404 page not found "
        f"(is {base} an Ollama server? /api/show does not exist)"
    )
    assert "/api/chat" not in str(error)


@pytest.mark.parametrize("operation", ["chat", "complete", "show", "preload"])
async def test_a_missing_model_is_model_not_found_everywhere(
    operation: str, fake_ollama: FakeOllama
) -> None:
    fake_ollama.remove_model("llama3.2")
    error = await fail(fake_ollama.url, operation)
    assert type(error) is ModelNotFound
    assert error.model == "llama3.2"
    assert error.endpoint == OPERATIONS[operation][1]
    assert str(error).startswith(f"model 'llama3.2' not found on {error.endpoint} (")


# --- the error classes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (OllamaError("?"), "other"),
        (OllamaUnavailable("http://x", "connection refused"), "unavailable"),
        (ModelNotFound("llama3.2"), "model_not_found"),
        (OllamaRequestError(400, "bad"), "http_400"),
        (OllamaRequestError(500, "boom"), "http_500"),
        (OllamaBusy(503, "server busy"), "busy"),
        (OllamaTimeout(2, started=False), "timeout"),
        (StreamInterrupted("model_error", "oom"), "stream_model_error"),
        (StreamInterrupted("incomplete", "no done"), "stream_incomplete"),
        (StreamInterrupted("dropped", "cut"), "stream_dropped"),
        (StreamInterrupted("malformed", "junk"), "stream_malformed"),
    ],
)
def test_each_error_carries_its_metrics_label(error: OllamaError, label: str) -> None:
    assert error.label == label


def test_errors_are_also_the_matching_standard_exceptions() -> None:
    unavailable = OllamaUnavailable("http://x", "connection refused", endpoint="/api/tags")
    assert isinstance(unavailable, ConnectionError)
    assert str(unavailable) == "cannot reach Ollama at http://x for /api/tags: connection refused"
    assert (unavailable.url, unavailable.reason) == ("http://x", "connection refused")
    timeout = OllamaTimeout(2.5, started=True)
    assert isinstance(timeout, TimeoutError)
    assert str(timeout) == "Ollama sent nothing for 2.5 s in the middle of the reply"
    assert (timeout.seconds, timeout.started) == (2.5, True)
    # The messages of the old signatures are unchanged.
    assert str(OllamaRequestError(500, "boom")) == "Ollama answered 500: boom"
    assert str(StreamInterrupted("dropped", "cut")) == "stream interrupted (dropped): cut"


def test_every_error_is_still_importable_from_bot_ollama() -> None:
    for name in (
        "OllamaError",
        "OllamaUnavailable",
        "ModelNotFound",
        "OllamaRequestError",
        "OllamaBusy",
        "OllamaTimeout",
        "StreamInterrupted",
    ):
        assert getattr(ollama, name) is getattr(ollama_errors, name)


# --- the transport itself --------------------------------------------------------------------


async def test_the_session_is_opened_lazily_and_closed(fake_ollama: FakeOllama) -> None:
    transport = OllamaTransport(fake_ollama.url + "/", connect_timeout=2, read_timeout=2)
    assert transport.base_url == fake_ollama.url
    assert transport.session is None
    assert (await transport.request_json("GET", "/api/version"))["version"]
    session = transport.session
    assert session is not None and not session.closed
    await transport.close()
    assert session.closed and transport.session is None
    user_agent = fake_ollama.requests[-1].headers["User-Agent"]
    assert user_agent.startswith("ollacord/")


async def test_a_stream_yields_each_object_as_it_arrives(fake_ollama: FakeOllama) -> None:
    transport = OllamaTransport(fake_ollama.url)
    try:
        body = {"model": "llama3.2", "messages": USER, "stream": True}
        objects = [obj async for obj in transport.stream("/api/chat", body, model="llama3.2")]
    finally:
        await transport.close()
    assert objects[-1]["done"] is True
    assert "".join(o["message"]["content"] for o in objects) == "You said: hi"


async def test_a_final_done_line_that_lost_only_its_newline_still_completes_the_answer() -> None:
    body = (
        b'{"model":"llama3.2","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,'
        b'"done_reason":"stop"}'
    )
    async with raw_server(http_200("application/x-ndjson", body)) as url:
        client = OllamaClient(url, busy_retry_delays=())
        try:
            chunks = [c async for c in client.chat("llama3.2", [{"role": "user", "content": "x"}])]
        finally:
            await client.close()
    assert "".join(c.content for c in chunks) == "Hi" and chunks[-1].done
