"""Tests of the fake Ollama server itself, over real HTTP.

Why: every bot test trusts this fake to behave like Ollama (docs/ollama-protocol.md). If the fake
drifted (a charset appended, headers sent early, a metric on an intermediate chunk) the bot's
tests would pass against a server that does not exist. So the wire is checked byte for byte with
a raw socket, and the client-visible behaviour with aiohttp, as the bot sees it.

No test asserts wall-clock durations: "headers held back" is checked by ordering events.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.fake_ollama import (
    IMAGE_TOKENS,
    FakeOllama,
    GoDurationError,
    ImageInfo,
    Reply,
    count_prompt_tokens,
    go_json,
    go_time_utc,
    parse_go_duration,
)

CREATED_AT_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
JSON_CT = "application/json; charset=utf-8"
HI = [{"role": "user", "content": "hello there"}]


# ------------------------------------------------------------------------------------ helpers


@dataclass
class RawResponse:
    """An HTTP/1.1 response as bytes on the wire, with the chunked framing kept visible."""

    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] | None
    complete: bool

    @property
    def lines(self) -> list[bytes]:
        return self.body.split(b"\n")[:-1] if self.body.endswith(b"\n") else self.body.split(b"\n")

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.split(b"\n") if line]


def parse_http(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if headers.get("transfer-encoding") != "chunked":
        length = int(headers.get("content-length", len(rest)))
        return RawResponse(status, headers, rest[:length], None, len(rest) >= length)
    chunks: list[bytes] = []
    complete = False
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            complete = after.startswith(b"\r\n")
            break
        if len(after) < size + 2:
            chunks.append(after[:size])  # truncated chunk
            break
        chunks.append(after[:size])
        rest = after[size + 2 :]
    return RawResponse(status, headers, b"".join(chunks), chunks, complete)


class RawClient:
    """A single HTTP request on a raw socket, so tests can see exactly what crossed the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def send(cls, fake: FakeOllama, method: str, path: str, body: Any = None) -> RawClient:
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{fake.port}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        return cls(reader, writer)

    async def read_all(self) -> bytes:
        data = await self.reader.read()
        self.close()
        return data

    async def response(self) -> RawResponse:
        return parse_http(await self.read_all())

    def close(self) -> None:
        self.writer.close()


async def raw(fake: FakeOllama, method: str, path: str, body: Any = None) -> RawResponse:
    client = await RawClient.send(fake, method, path, body)
    return await client.response()


def chat(content: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **fields}


def without_time(line: bytes) -> bytes:
    return re.sub(rb'"created_at":"[^"]*"', b'"created_at":"T"', line)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(
        thinking_models=["qwen3"], no_tools_models=["gemma"], embedding_models=["nomic-embed-text"]
    ) as server:
        server.add_model("gemma")
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# ------------------------------------------------------------------------ Go encoding helpers


def test_go_json_matches_go_encoding() -> None:
    """Compact, HTML characters and line separators escaped, other non-ASCII raw, key order
    kept, integral floats printed like Go's float64."""
    value = {"b": '<a> & \u2028\u2029 é 🌤 "q" \n', "a": 2.0, "c": 0.5, "d": None}
    expected = (
        '{"b":"\\u003ca\\u003e \\u0026 \\u2028\\u2029 é 🌤 \\"q\\" \\n","a":2,"c":0.5,"d":null}'
    )
    assert go_json(value) == expected.encode()


def test_created_at_is_rfc3339nano_utc() -> None:
    """Go drops trailing fractional zeros, and the dot too when the fraction is zero."""
    assert go_time_utc(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"
    assert go_time_utc(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert go_time_utc(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("5m", 300 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("-1s", -(10**9)),
        ("1.5h", 5400 * 10**9),
        ("250ms", 250 * 10**6),
        ("0", 0),
        ("+2us", 2000),
    ],
)
def test_parse_go_duration_accepts_go_syntax(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        (".s", 'time: invalid duration ".s"'),
    ],
)
def test_parse_go_duration_errors_use_go_text(text: str, message: str) -> None:
    with pytest.raises(GoDurationError) as err:
        parse_go_duration(text)
    assert str(err.value) == message


# ----------------------------------------------------------------------- simple endpoints (1)


async def test_root_version_and_router_errors(fake: FakeOllama) -> None:
    """Behaviours 1 and 29: the liveness probe, and gin's text/plain router errors."""
    root = await raw(fake, "GET", "/")
    assert (root.status, root.body) == (200, b"Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    head = await raw(fake, "HEAD", "/")
    assert head.status == 200

    version = await raw(fake, "GET", "/api/version")
    assert (version.body, version.headers["content-type"]) == (b'{"version":"0.12.6"}', JSON_CT)

    wrong_method = await raw(fake, "GET", "/api/chat")
    assert (wrong_method.status, wrong_method.body) == (405, b"405 method not allowed")
    assert wrong_method.headers["content-type"] == "text/plain"
    unknown = await raw(fake, "POST", "/api/nothing", {})
    assert (unknown.status, unknown.body) == (404, b"404 page not found")
    assert unknown.headers["content-type"] == "text/plain"
    assert [r.path for r in fake.requests] == [
        "/",
        "/",
        "/api/version",
        "/api/chat",
        "/api/nothing",
    ]


# --------------------------------------------------------------------------- streaming wire


async def test_stream_wire_format_is_byte_exact(fake: FakeOllama) -> None:
    """Behaviours 2, 3, 5, 6, 7, 26: one chunk per line, exact bytes and key order, no metrics
    or done_reason before the final chunk, and the model name echoed verbatim."""
    fake.queue(Reply(tokens=["The", " sky", " is blue & bright 🌤 <b>\u2028"]))
    resp = await raw(fake, "POST", "/api/chat", {**chat(), "model": "LLaMA3.2"})

    assert resp.status == 200
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert resp.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in resp.headers
    assert resp.complete
    assert resp.chunks is not None and len(resp.chunks) == 4
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in resp.chunks)
    assert without_time(resp.chunks[2]) == (
        b'{"model":"LLaMA3.2","created_at":"T","message":{"role":"assistant","content":'
        b'" is blue \\u0026 bright \xf0\x9f\x8c\xa4 \\u003cb\\u003e\\u2028"},"done":false}\n'
    )
    events = resp.json_lines()
    for event in events:
        assert CREATED_AT_RE.match(event["created_at"]), event["created_at"]
    for event in events[:3]:
        assert list(event) == ["model", "created_at", "message", "done"]
    final = events[3]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "stop"
    assert all(type(final[k]) is int and final[k] > 0 for k in METRICS)
    assert final["eval_count"] == 3
    assert final["prompt_eval_count"] == 3  # "user", "hello", "there"
    assert final["total_duration"] >= (
        final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    )


async def test_default_responder_echoes_the_prompt(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """With no scripted reply the fake answers "You said: ..." so tests see what it received."""
    body = chat("first", stream=None)
    body["messages"] += [
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "what now?"},
    ]
    async with session.post(f"{fake.url}/api/chat", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        events = [json.loads(line) async for line in resp.content if line.strip()]
    contents = [e["message"]["content"] for e in events[:-1]]
    assert contents == ["You", " said:", " what", " now?"]
    assert events[-1]["done"] is True
    assert fake.chat_requests == [body]


async def test_headers_are_held_back_until_the_model_is_loaded(fake: FakeOllama) -> None:
    """Behaviour 4: during load and prompt evaluation not even the status line is sent."""
    fake.queue(Reply(tokens=["hi"], load_delay=0.2, prompt_eval_delay=0.05))
    client = await RawClient.send(fake, "POST", "/api/chat", chat())
    first_byte = asyncio.create_task(client.reader.read(1))
    rec = None
    while rec is None or rec.event_time("loaded") is None:
        if first_byte.done():
            # A byte arrived: the server must have finished loading before it sent it (on a
            # busy machine both can happen within one of this loop's sleeps).
            rec = next((r for r in fake.requests if r.path == "/api/chat"), None)
            assert rec is not None and rec.event_time("loaded") is not None
            break
        await asyncio.sleep(0.01)
        rec = next((r for r in fake.requests if r.path == "/api/chat"), None)
    assert await first_byte == b"H"
    client_saw_bytes = time.perf_counter()
    rest = await client.read_all()
    loaded, sent = rec.event_time("loaded"), rec.event_time("first_byte")
    assert loaded is not None and sent is not None
    assert loaded <= sent <= client_saw_bytes
    response = parse_http(b"H" + rest)
    final = response.json_lines()[-1]
    assert final["load_duration"] >= 0.2e9 + fake.cold_load_duration * 1e9 - 1e7


async def test_write_size_splits_lines_and_utf8_across_chunks(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """Each piece is its own chunk, so lines (and a 4-byte emoji) straddle reads."""
    fake.queue(Reply(tokens=["héllo 🌤", " wörld"], write_size=5))
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert resp.chunks is not None
    assert all(len(c) <= 5 for c in resp.chunks)
    split_utf8 = 0
    for chunk in resp.chunks:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            split_utf8 += 1
    assert split_utf8 > 0
    assert [e["message"]["content"] for e in resp.json_lines()] == ["héllo 🌤", " wörld", ""]

    fake.queue(Reply(tokens=["héllo 🌤"], write_size=3))
    async with session.post(f"{fake.url}/api/chat", json=chat()) as http:
        data = b"".join([piece async for piece in http.content.iter_any()])
    assert json.loads(data.split(b"\n")[0])["message"]["content"] == "héllo 🌤"


# ---------------------------------------------------------------------------- non-stream (8)


async def test_non_stream_reply_is_one_json_object(fake: FakeOllama) -> None:
    fake.queue(Reply(tokens=["Hello", "!", " <3"], final_content=" bye"))
    resp = await raw(fake, "POST", "/api/chat", chat(stream=False))
    assert resp.status == 200
    assert resp.headers["content-type"] == JSON_CT
    assert int(resp.headers["content-length"]) == len(resp.body)
    assert not resp.body.endswith(b"\n")
    assert b"\\u003c3" in resp.body
    obj = json.loads(resp.body)
    assert list(obj) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert obj["message"] == {"role": "assistant", "content": "Hello! <3 bye"}
    assert obj["eval_count"] == 3


async def test_non_stream_thinking_and_done_false(fake: FakeOllama) -> None:
    """Thinking is concatenated; a repeat-abort (done=False) gives done:false and no metrics."""
    fake.queue(Reply(tokens=["A", "B"], thinking=["hm", "m"]), Reply(tokens=["x"], done=False))
    obj = json.loads((await raw(fake, "POST", "/api/chat", chat(model="qwen3", stream=False))).body)
    assert obj["message"] == {"role": "assistant", "content": "AB", "thinking": "hmm"}
    assert obj["eval_count"] == 4

    resp = await raw(fake, "POST", "/api/chat", chat(stream=False))
    obj = json.loads(resp.body)
    assert resp.status == 200
    assert list(obj) == ["model", "created_at", "message", "done"]
    assert obj["done"] is False and obj["message"]["content"] == "x"


# ------------------------------------------------------------------ errors and stream endings


async def test_unknown_model_404_both_wordings() -> None:
    """Behaviour 10: the ≥ v0.12 text, and the ≤ v0.11 one behind a switch."""
    for legacy, expected in [
        (False, b'{"error":"model \'nope:7b\' not found"}'),
        (True, b'{"error":"model \\"nope:7b\\" not found, try pulling it first"}'),
    ]:
        with FakeOllama(legacy_not_found=legacy) as server:
            resp = await raw(server, "POST", "/api/chat", chat(model="nope:7b"))
            assert (resp.status, resp.body) == (404, expected)
            assert resp.headers["content-type"] == JSON_CT
            assert server.chat_requests == []


async def test_error_before_first_event_keeps_status_without_charset(fake: FakeOllama) -> None:
    """Row 15: a real status and ``application/json`` without charset when streaming; a
    scripted runner error with nothing before it is an error line (older servers)."""
    fake.queue(
        Reply(status=429, status_message="rate limit exceeded"),
        Reply(error_after=0),
        Reply(status=429, status_message="rate limit exceeded"),
    )
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert (resp.status, resp.body) == (429, b'{"error":"rate limit exceeded"}')
    assert resp.headers["content-type"] == "application/json"

    # error_after=0: the error is the first line of a 200 stream (older servers' behaviour).
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert (resp.status, resp.headers["content-type"]) == (200, "application/x-ndjson")
    assert resp.lines == [
        b'{"error":"an error was encountered while running the model: unexpected EOF"}'
    ]
    assert resp.complete

    resp = await raw(fake, "POST", "/api/chat", chat(stream=False))
    assert (resp.status, resp.headers["content-type"]) == (429, JSON_CT)

    # Without streaming every error is a c.JSON with the status (500 for runner errors).
    fake.queue(Reply(tokens=["partial"], error_after=1))
    resp = await raw(fake, "POST", "/api/chat", chat(stream=False))
    assert (resp.status, resp.headers["content-type"]) == (500, JSON_CT)
    assert resp.body == (
        b'{"error":"an error was encountered while running the model: unexpected EOF"}'
    )


async def test_mid_stream_error_line_then_clean_end(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """Behaviour 16: status stays 200, one error line, no done line, chunked terminator."""
    fake.queue(Reply(tokens=["Yes", " and", " more"], error_after=1, error_message="boom"))
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert resp.status == 200 and resp.complete
    lines = resp.lines
    assert len(lines) == 2
    assert lines[1] == b'{"error":"an error was encountered while running the model: boom"}'

    fake.queue(Reply(tokens=["Yes", " and"], error_after=1))
    async with session.post(f"{fake.url}/api/chat", json=chat()) as http:
        events = [json.loads(line) async for line in http.content]
    assert "error" in events[-1] and not any(e.get("done") for e in events)


async def test_eof_without_done(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    """Behaviour 17: the token-repeat abort ends the stream cleanly with no done line."""
    fake.queue(Reply(tokens=["\n"] * 3, done=False))
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert resp.complete
    assert [e["done"] for e in resp.json_lines()] == [False, False, False]

    fake.queue(Reply(tokens=["a"], done=False))
    async with session.post(f"{fake.url}/api/chat", json=chat()) as http:
        body = await http.read()  # no exception: a clean end
    assert body.count(b"\n") == 1 and b'"done":false' in body


async def test_abrupt_drop_mid_stream(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    """Behaviour 18: the connection closes without a chunked terminator, even mid-line."""
    fake.queue(Reply(tokens=["a", "b", "c"], drop_after=1))
    async with session.post(f"{fake.url}/api/chat", json=chat()) as http:
        assert http.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await http.read()

    fake.queue(Reply(tokens=["a", "b", "c"], drop_after=2, drop_mid_line=True))
    resp = await raw(fake, "POST", "/api/chat", chat())
    assert not resp.complete
    assert len(resp.lines) == 3
    assert resp.lines[2].startswith(b'{"model":"llama3.2"') and not resp.body.endswith(b"\n")
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.lines[2])
    assert fake.cancelled == 0  # a server-side drop is not a client cancel


async def test_drop_before_headers_is_a_server_disconnect(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """A crash before the first event closes the socket with no status line at all."""
    fake.queue(Reply(drop_after=0), Reply(drop_after=0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await session.post(f"{fake.url}/api/chat", json=chat())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await session.post(f"{fake.url}/api/chat", json=chat(stream=False))
    assert fake.cancelled == 0


async def test_client_disconnect_is_counted_and_frees_the_slot(fake: FakeOllama) -> None:
    """Behaviour 19: generation stops, the slot is released and ``cancelled`` goes up."""
    fake.queue(Reply(tokens=["tick"] * 200, token_delay=0.02), Reply(hang=True))
    client = await RawClient.send(fake, "POST", "/api/chat", chat())
    assert await client.reader.readuntil(b"\n")
    client.close()
    assert await fake.wait_for_async(lambda f: f.cancelled == 1 and f.active == 0)
    rec = fake.requests[-1]
    assert rec.event_time("cancelled") is not None

    hung = await RawClient.send(fake, "POST", "/api/chat", chat(stream=False))
    assert await fake.wait_for_async(lambda f: f.active == 1)
    hung.close()
    assert await fake.wait_for_async(lambda f: f.cancelled == 2 and f.active == 0)

    resp = await raw(fake, "POST", "/api/chat", chat())
    assert resp.json_lines()[-1]["done"] is True


async def test_parallel_slots_queue_and_503_limit() -> None:
    """Behaviours 20 and 21: extra requests wait with headers held back; past ``max_queue``
    the answer is an immediate 503 with Ollama's two-space message."""
    with FakeOllama(num_parallel=1, max_queue=1) as fake:
        fake.queue(Reply(hang=True), Reply(tokens=["second"]))
        first = await RawClient.send(fake, "POST", "/api/chat", chat("one"))
        assert await fake.wait_for_async(lambda f: f.active == 1)
        second = await RawClient.send(fake, "POST", "/api/chat", chat("two"))
        assert await fake.wait_for_async(lambda f: f.waiting == 1)
        second_bytes = asyncio.create_task(second.read_all())

        third = await raw(fake, "POST", "/api/chat", chat("three"))
        assert third.status == 503
        assert third.body == (
            b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
        )
        assert third.headers["content-type"] == JSON_CT
        assert not second_bytes.done()

        first.close()
        response = parse_http(await second_bytes)
        assert response.status == 200
        assert [e["message"]["content"] for e in response.json_lines()] == ["second", ""]
        assert fake.cancelled == 1
        assert [r["messages"][0]["content"] for r in fake.chat_requests] == ["one", "two"]

    with FakeOllama(num_parallel=2) as fake:
        fake.queue(Reply(hang=True), Reply(hang=True))
        clients = [await RawClient.send(fake, "POST", "/api/chat", chat()) for _ in range(2)]
        assert await fake.wait_for_async(lambda f: f.active == 2 and f.waiting == 0)
        for client in clients:
            client.close()
        assert await fake.wait_for_async(lambda f: f.active == 0 and f.cancelled == 2)


# ------------------------------------------------------------------------- validation (9-23)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "missing request body"),
        (b"  \n", 400, "missing request body"),
        (b'{"model":', 400, "unexpected EOF"),
        (b"{x}", 400, "invalid character 'x' looking for beginning of object key string"),
        (b"nope", 400, "invalid character 'o' in literal null (expecting 'u')"),
        (b'{"messages":"hi"}', 400, None),
        (b"null", 400, "model is required"),
        (b'{"model":"  "}', 400, "model is required"),
        (b'{"model":"llama3.2","top_logprobs":21}', 400, "top_logprobs must be between 0 and 20"),
        (
            b'{"model":"llama3.2","keep_alive":"300"}',
            400,
            'time: missing unit in duration "300"',
        ),
        (b'{"model":"llama3.2","keep_alive":"abc"}', 400, 'time: invalid duration "abc"'),
        (b'{"model":"llama3.2","keep_alive":true}', 400, "Unsupported type: 'bool'"),
        (
            b'{"model":"llama3.2","think":"maybe"}',
            400,
            'invalid think value: "maybe" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            b'{"model":"llama3.2","think":true,"messages":[]}',
            400,
            '"llama3.2" does not support thinking',
        ),
        (
            b'{"model":"nomic-embed-text","messages":[]}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
        (
            b'{"model":"gemma","tools":[{"type":"function","function":{"name":"f"}}],'
            b'"messages":[{"role":"user","content":"x"}]}',
            400,
            "registry.ollama.ai/library/gemma:latest does not support tools",
        ),
        (
            b'{"model":"llama3.2","options":{"temperature":"hot"},"messages":[{"content":"x"}]}',
            500,
            'option "temperature" must be of type float32',
        ),
        (
            b'{"model":"llama3.2","options":{"num_ctx":"big"},"messages":[{"content":"x"}]}',
            500,
            'option "num_ctx" must be of type integer',
        ),
    ],
)
async def test_validation_errors(
    fake: FakeOllama, body: bytes, status: int, error: str | None
) -> None:
    """Behaviours 9, 11, 22, 23: Go's error texts, ``application/json; charset=utf-8``."""
    resp = await raw(fake, "POST", "/api/chat", body)
    assert resp.status == status
    assert resp.headers["content-type"] == JSON_CT
    assert not resp.body.endswith(b"\n")
    message = json.loads(resp.body)["error"]
    if error is None:
        assert message == (
            "json: cannot unmarshal string into Go struct field ChatRequest.messages "
            "of type []api.Message"
        )
    else:
        assert message == error
    assert fake.chat_requests == []


async def test_invalid_format_is_a_runner_error(fake: FakeOllama) -> None:
    """Behaviour 24: any other format string fails in the runner, before the first event."""
    resp = await raw(fake, "POST", "/api/chat", chat(format="xml"))
    assert resp.status == 500
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.body)["error"] == (
        'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'
    )
    resp = await raw(fake, "POST", "/api/chat", chat(format="json"))
    content = "".join(e["message"]["content"] for e in resp.json_lines())
    assert json.loads(content) == {"response": "You said: hello there"}


async def test_options_keep_alive_and_unknown_fields(fake: FakeOllama) -> None:
    """Behaviours 22, 23, 30: valid values and unknown keys are accepted; num_predict caps."""
    fake.queue(Reply(tokens=["a", "b", "c", "d"]))
    body = chat(
        options={"num_predict": 2, "temperature": 1, "mystery": [1]},
        keep_alive="1h30m",
        whatever={"x": 1},
    )
    final = (await raw(fake, "POST", "/api/chat", body)).json_lines()
    assert [e["message"]["content"] for e in final] == ["a", "b", ""]
    assert final[-1]["done_reason"] == "length" and final[-1]["eval_count"] == 2
    for keep_alive in (300, -1, "5m", "-1s", 0.5):
        resp = await raw(fake, "POST", "/api/chat", chat(keep_alive=keep_alive))
        assert resp.status == 200, keep_alive


async def test_context_overflow_truncates_or_fails(fake: FakeOllama) -> None:
    """Behaviour 25: old messages are dropped silently; ``truncate:false`` fails up front."""
    long = " ".join(["word"] * 50)
    body = {
        "model": "llama3.2",
        "options": {"num_ctx": 20},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": long},
            {"role": "user", "content": "last question"},
        ],
    }
    final = (await raw(fake, "POST", "/api/chat", body)).json_lines()[-1]
    assert final["prompt_eval_count"] == 6  # system(1+2) + user(1+2): the long one was dropped
    resp = await raw(fake, "POST", "/api/chat", {**body, "truncate": False})
    assert resp.status == 400 and resp.headers["content-type"] == "application/json"


# ----------------------------------------------------------------- thinking and tools (12-13)


async def test_thinking_stream(fake: FakeOllama) -> None:
    """Behaviour 12: thinking first with ``content:""``, then content; ``think:false`` hides it."""
    fake.queue(Reply(tokens=["The", " sky"], thinking=["Okay", ", so"], mixed_transition=True))
    events = (await raw(fake, "POST", "/api/chat", chat(model="qwen3"))).json_lines()
    assert [e["message"] for e in events[:3]] == [
        {"role": "assistant", "content": "", "thinking": "Okay"},
        {"role": "assistant", "content": "The", "thinking": ", so"},
        {"role": "assistant", "content": " sky"},
    ]
    assert events[-1]["eval_count"] == 4

    resp = await raw(fake, "POST", "/api/chat", chat(model="qwen3"))
    thoughts = [e["message"].get("thinking") for e in resp.json_lines()]
    assert thoughts[0] and "hello there" in "".join(t for t in thoughts if t)

    resp = await raw(fake, "POST", "/api/chat", chat(model="qwen3", think=False))
    assert b"thinking" not in resp.body
    resp = await raw(fake, "POST", "/api/chat", chat(model="qwen3", think="high"))
    assert resp.status == 200


async def test_tool_calls_are_complete(fake: FakeOllama) -> None:
    """Behaviour 13: complete calls with id and index, on a done:false chunk or the final one."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Tokyo", "days": 2}}}
    fake.queue(
        Reply(tokens=[], tool_calls=[call, {"name": "now", "arguments": {}}]),
        Reply(tokens=[], tool_calls=[call], tool_calls_on_final=True),
    )
    events = (await raw(fake, "POST", "/api/chat", chat())).json_lines()
    assert len(events) == 2
    message = events[0]["message"]
    assert list(message) == ["role", "content", "tool_calls"] and message["content"] == ""
    first, second = message["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", first["id"])
    assert list(first) == ["id", "function"]
    assert first["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": "Tokyo", "days": 2},
    }
    assert second["function"]["index"] == 1
    assert events[1]["done"] is True and "tool_calls" not in events[1]["message"]

    events = (await raw(fake, "POST", "/api/chat", chat())).json_lines()
    assert len(events) == 1 and events[0]["done"] is True
    assert events[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_logprobs_when_requested(fake: FakeOllama) -> None:
    fake.queue(Reply(tokens=["hi"]))
    events = (
        await raw(fake, "POST", "/api/chat", chat(logprobs=True, top_logprobs=2))
    ).json_lines()
    assert list(events[0]) == ["model", "created_at", "message", "done", "logprobs"]
    assert events[0]["logprobs"][0]["token"] == "hi"
    assert len(events[0]["logprobs"][0]["top_logprobs"]) == 2
    assert "logprobs" not in events[-1]


# --------------------------------------------------------------------- load and unload (6, 14)


async def test_load_unload_and_load_duration(fake: FakeOllama) -> None:
    """Behaviours 6 and 14: empty messages load (one JSON object even when streaming),
    ``keep_alive:0`` unloads; load_duration is large only on a cold start."""
    resp = await raw(fake, "POST", "/api/chat", {"model": "llama3.2"})
    assert resp.headers["content-type"] == JSON_CT
    obj = json.loads(resp.body)
    assert list(obj) == ["model", "created_at", "message", "done", "done_reason"]
    assert obj["done_reason"] == "load" and obj["message"] == {"role": "assistant", "content": ""}
    assert fake.loaded_models() == ["llama3.2:latest"]
    assert fake.chat_requests == []

    warm = (await raw(fake, "POST", "/api/chat", chat())).json_lines()[-1]["load_duration"]
    assert warm < 0.5e9

    resp = await raw(
        fake, "POST", "/api/chat", {"model": "llama3.2", "messages": [], "keep_alive": 0}
    )
    assert json.loads(resp.body)["done_reason"] == "unload"
    assert fake.loaded_models() == []
    ps = json.loads((await raw(fake, "GET", "/api/ps")).body)
    assert ps == {"models": []}

    cold = (await raw(fake, "POST", "/api/chat", chat(keep_alive=0))).json_lines()[-1]
    assert cold["load_duration"] >= 1e9 > warm
    assert fake.loaded_models() == []  # keep_alive 0 unloads after the request


# --------------------------------------------------------------- tags, show, ps, pull (27-28)


async def test_tags_show_and_ps(fake: FakeOllama) -> None:
    tags = await raw(fake, "GET", "/api/tags")
    assert tags.headers["content-type"] == JSON_CT
    models = json.loads(tags.body)["models"]
    assert {m["name"] for m in models} == {
        "llama3.2:latest",
        "qwen3:latest",
        "nomic-embed-text:latest",
        "gemma:latest",
    }
    assert list(models[0]) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert models[0]["details"]["format"] == "gguf"
    with FakeOllama(models=()) as empty:
        assert (await raw(empty, "GET", "/api/tags")).body == b'{"models":[]}'

    show = json.loads((await raw(fake, "POST", "/api/show", {"model": "qwen3"})).body)
    assert show["model_info"] == {"general.architecture": "llama", "llama.context_length": 131072}
    assert show["capabilities"] == ["completion", "tools", "thinking"]
    missing = await raw(fake, "POST", "/api/show", {"model": "x"})
    assert (missing.status, missing.body) == (404, b'{"error":"model \'x:latest\' not found"}')
    no_name = await raw(fake, "POST", "/api/show", {})
    assert (no_name.status, no_name.body) == (400, b'{"error":"model is required"}')
    assert (await raw(fake, "GET", "/api/show")).status == 405

    assert json.loads((await raw(fake, "GET", "/api/ps")).body) == {"models": []}
    await raw(fake, "POST", "/api/chat", chat(keep_alive=-1, options={"num_ctx": 8192}))
    running = json.loads((await raw(fake, "GET", "/api/ps")).body)["models"]
    assert [m["name"] for m in running] == ["llama3.2:latest"]
    assert running[0]["context_length"] == 8192
    assert list(running[0])[-3:] == ["expires_at", "size_vram", "context_length"]


async def test_pull_progress_and_errors(fake: FakeOllama) -> None:
    assert (await raw(fake, "POST", "/api/chat", chat(model="mistral"))).status == 404
    resp = await raw(fake, "POST", "/api/pull", {"model": "mistral"})
    assert resp.headers["content-type"] == "application/x-ndjson" and resp.complete
    events = resp.json_lines()
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = events[1:-3]
    assert re.fullmatch(r"pulling [0-9a-f]{12}", layer[0]["status"])
    assert "completed" not in layer[0]
    assert layer[0]["digest"] == "sha256:" + layer[0]["digest"][7:]
    assert layer[0]["status"] == "pulling " + layer[0]["digest"][7:19]
    completed = [e["completed"] for e in layer[1:]]
    assert completed == sorted(completed) and completed[-1] == layer[0]["total"]
    assert (await raw(fake, "POST", "/api/chat", chat(model="mistral"))).status == 200

    unknown = await raw(fake, "POST", "/api/pull", {"model": "nosuch"})
    assert unknown.status == 200
    assert unknown.lines == [
        b'{"status":"pulling manifest"}',
        b'{"error":"pull model manifest: file does not exist"}',
    ]
    quiet = await raw(fake, "POST", "/api/pull", {"model": "nosuch", "stream": False})
    assert (quiet.status, quiet.headers["content-type"]) == (500, JSON_CT)
    assert quiet.body == b'{"error":"pull model manifest: file does not exist"}'
    ok = await raw(fake, "POST", "/api/pull", {"model": "qwen3:8b", "stream": False})
    assert (ok.status, ok.body) == (200, b'{"status":"success"}')
    assert "qwen3:8b" in [
        m["name"] for m in json.loads((await raw(fake, "GET", "/api/tags")).body)["models"]
    ]


# ----------------------------------------------------------------------- lifecycle and CLI


async def test_stop_with_a_hung_handler_is_prompt() -> None:
    """A hung request must not hold up teardown (docs/testing.md#trap-teardown), and it is not a
    client cancel."""
    fake = FakeOllama().start()
    fake.queue(Reply(hang=True))
    client = await RawClient.send(fake, "POST", "/api/chat", chat())
    assert await fake.wait_for_async(lambda f: f.active == 1)
    thread = threading.Thread(target=fake.stop)
    thread.start()
    data = await client.read_all()  # the server closes the socket without answering
    await asyncio.to_thread(thread.join, 5)
    assert data == b"" and not thread.is_alive()
    assert fake._thread is not None and not fake._thread.is_alive()
    assert fake.cancelled == 0
    fake.stop()  # idempotent


def test_wait_for_polls_until_true_or_timeout() -> None:
    with FakeOllama() as fake:
        assert fake.wait_for(lambda f: f.url.startswith("http://127.0.0.1:"))
        assert not fake.wait_for(lambda f: f.active > 0, timeout=0.05)


def test_runs_as_a_module_in_the_foreground() -> None:
    """``python -m tests.fake_ollama`` serves until terminated (out-of-process tests)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_ollama", "--port", "0", "--model", "mistral"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")

        async def probe() -> tuple[str, list[str]]:
            async with aiohttp.ClientSession() as client:
                async with client.get(url) as resp:
                    text = await resp.text()
                async with client.get(f"{url}/api/tags") as resp:
                    names = [m["name"] for m in (await resp.json())["models"]]
            return text, names

        assert asyncio.run(probe()) == ("Ollama is running", ["mistral:latest"])
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


# --------------------------------------------------------------------------- prompt cache


def test_prompt_cache_evaluates_only_tokens_after_the_shared_prefix() -> None:
    """Like a warm llama.cpp runner: the second prompt shares the first one's beginning, so
    prompt_eval_count counts only what follows; a different model has its own cache."""

    async def go(fake: FakeOllama) -> list[int]:
        counts = []
        async with aiohttp.ClientSession() as http:
            history = [{"role": "user", "content": "one two three"}]
            for model, extra in (("llama3.2", None), ("llama3.2", "four five"), ("qwen3", None)):
                if extra:
                    history = [
                        *history,
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": extra},
                    ]
                body = {"model": model, "messages": history, "stream": False, "think": False}
                async with http.post(f"{fake.url}/api/chat", json=body) as r:
                    counts.append((await r.json())["prompt_eval_count"])
        return counts

    with FakeOllama(models=("llama3.2", "qwen3")) as fake:
        counts = asyncio.run(go(fake))
        stats = fake.prompt_stats
    # "user one two three" = 4 tokens; then + "assistant ok user four five" = 5 more, of which
    # "assistant" was cached too (the cache holds the generated answer, which started there);
    # the same 9-token prompt on another model is evaluated in full.
    assert counts == [4, 4, 9]
    assert [(s.total, s.cached) for s in stats] == [(4, 0), (9, 5), (9, 0)]


def test_the_prompt_cache_keeps_the_generated_answer_like_ollama_runners() -> None:
    """Ollama's runner keeps the tokens it generated in the sequence's KV cache: a next prompt
    that repeats the answer verbatim evaluates only what comes after it."""

    async def go(fake: FakeOllama) -> list[int]:
        counts = []
        history = [{"role": "user", "content": "one two three"}]
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                body = {"model": "llama3.2", "messages": history, "stream": False}
                async with http.post(f"{fake.url}/api/chat", json=body) as r:
                    answer = await r.json()
                counts.append(answer["prompt_eval_count"])
                history = [
                    *history,
                    {"role": "assistant", "content": answer["message"]["content"]},
                    {"role": "user", "content": "four five"},
                ]
        return counts

    with FakeOllama() as fake:
        counts = asyncio.run(go(fake))
    assert counts == [4, 3]  # then only "user four five"


def test_prompt_eval_can_include_cached_tokens_like_some_servers() -> None:
    async def go(fake: FakeOllama) -> list[int]:
        counts = []
        async with aiohttp.ClientSession() as http:
            for content in ("one two three", "one two three four"):
                body = {
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": content}],
                    "stream": False,
                }
                async with http.post(f"{fake.url}/api/chat", json=body) as r:
                    counts.append((await r.json())["prompt_eval_count"])
        return counts

    with FakeOllama(prompt_eval_includes_cached=True) as fake:
        assert asyncio.run(go(fake)) == [4, 5]


# --------------------------------------------------------------------------- images and vision


def image_b64(fmt: str = "PNG", size: tuple[int, int] = (64, 32), noise: bool = False) -> str:
    """A real image file, base64-encoded as a chat message's ``images`` carries it."""
    if noise:  # incompressible pixels: a file long enough to cut in the middle of its data
        pixels = random.Random(0).randbytes(size[0] * size[1] * 3)
        image = Image.frombytes("RGB", size, pixels)
    else:
        image = Image.new("RGB", size, "teal")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def user(content: str, *images: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": content}
    if images:
        message["images"] = list(images)
    return message


@pytest.fixture
def vision_fake() -> Iterator[FakeOllama]:
    with FakeOllama(
        models=["llama3.2"],
        vision_models=["gemma3", "llama3.2-vision", "qwen3-vl"],
        thinking_models=["qwen3-vl"],
        no_tools_models=["gemma3"],
        no_vision_data_models=["gemma3:1b"],
    ) as server:
        yield server


async def chat_json(
    session: aiohttp.ClientSession, fake: FakeOllama, model: str, *messages: dict[str, Any]
) -> tuple[int, str, dict[str, Any]]:
    """A ``stream:false`` chat: status, Content-Type and the JSON body."""
    body = {"model": model, "messages": list(messages), "stream": False}
    async with session.post(f"{fake.url}/api/chat", json=body) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.json(content_type=None)


async def test_show_lists_vision_after_completion_like_ollama(
    vision_fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """``Model.Capabilities`` order: completion, vision (from the GGUF), tools, thinking (from the
    template). A multimodal model without its vision weights has no "vision"; other models keep
    what they had."""
    expected = {
        "gemma3": ["completion", "vision"],
        "qwen3-vl": ["completion", "vision", "tools", "thinking"],
        "llama3.2-vision": ["completion", "vision", "tools"],
        "gemma3:1b": ["completion", "tools"],
        "llama3.2": ["completion", "tools"],
    }
    for model, capabilities in expected.items():
        async with session.post(f"{vision_fake.url}/api/show", json={"model": model}) as resp:
            show = await resp.json()
        assert show["capabilities"] == capabilities, model
    async with session.post(f"{vision_fake.url}/api/show", json={"model": "llama3.2-vision"}) as r:
        assert (await r.json())["details"]["family"] == "mllama"
    async with session.get(f"{vision_fake.url}/api/tags") as resp:
        names = {m["name"] for m in (await resp.json())["models"]}
    assert names == {f"{m}:latest" if ":" not in m else m for m in expected}


async def test_a_vision_model_sees_the_images_and_says_how_many(
    vision_fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """Every image of every message is decoded and its size recorded, per request and per
    message; the default answer says how many it saw, and stays as it was without images."""
    body = {
        "model": "gemma3",
        "messages": [
            user("first", image_b64("PNG", (64, 32))),
            {"role": "assistant", "content": "ok"},
            user("what are these?", image_b64("JPEG", (10, 20)), image_b64("WEBP", (5, 7))),
        ],
    }
    async with session.post(f"{vision_fake.url}/api/chat", json=body) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "application/x-ndjson")
        events = [json.loads(line) async for line in resp.content if line.strip()]
    content = "".join(e["message"]["content"] for e in events)
    assert content == "You said: what are these? (and I see 3 images)"
    # user first (2) + an image, assistant ok (2), user what are these ? (5) + two images
    assert events[-1]["prompt_eval_count"] == 2 + 2 + 5 + 3 * IMAGE_TOKENS
    assert vision_fake.received_images == [
        [[(64, 32, "png")], [], [(10, 20, "jpeg"), (5, 7, "webp")]]
    ]
    assert vision_fake.received_images[0][2][1] == ImageInfo(width=5, height=7, format="webp")

    status, _, answer = await chat_json(
        session, vision_fake, "gemma3", user("and these", image_b64("PNG"), None)
    )
    assert status == 500  # a null image is an empty one: no decoder knows it
    status, _, answer = await chat_json(
        session,
        vision_fake,
        "gemma3",
        user("one more", image_b64("TIFF", (3, 4)), image_b64("BMP", (1, 1))),
    )
    assert (status, answer["message"]["content"]) == (
        200,
        "You said: one more (and I see 2 images)",
    )
    status, _, answer = await chat_json(session, vision_fake, "gemma3", user("hello there"))
    assert (status, answer["message"]["content"]) == (200, "You said: hello there")
    assert vision_fake.received_images[1:] == [[[]], [[(3, 4, "tiff"), (1, 1, "bmp")]], [[]]]
    assert len(vision_fake.chat_requests) == 4


async def test_a_text_model_drops_images_silently(
    vision_fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """Ollama never checks the vision capability: a text model's runner leaves the images out
    and answers as if there were none."""
    status, _, answer = await chat_json(
        session, vision_fake, "llama3.2", user("look at this", image_b64(), "aGVsbG8=")
    )
    assert (status, answer["message"]["content"]) == (200, "You said: look at this")
    assert answer["prompt_eval_count"] == 4  # user look at this: the images cost nothing
    assert vision_fake.received_images == [[[]]]


@pytest.mark.parametrize(
    ("model", "image", "error"),
    [
        ("gemma3:1b", image_b64(), "this model is missing data required for image input"),
        ("gemma3", "aGVsbG8=", "image: unknown format"),  # "hello": valid base64, no image
        ("gemma3", image_b64("GIF"), "image: unknown format"),  # no GIF decoder in Ollama
        ("gemma3", image_b64(size=(200, 100), noise=True)[:2000], "unexpected EOF"),
    ],
)
async def test_images_the_runner_cannot_take_are_a_500(
    vision_fake: FakeOllama, model: str, image: str, error: str
) -> None:
    """The runner's error before the first event: 500, bare ``application/json`` when
    streaming, ``c.JSON`` otherwise. The model was loaded; the prompt cache is untouched."""
    message = "Failed to create new sequence: failed to process inputs: " + error
    body = {"model": model, "messages": [user("look", image_b64("JPEG"), image)]}
    resp = await raw(vision_fake, "POST", "/api/chat", body)
    assert (resp.status, resp.headers["content-type"]) == (500, "application/json")
    assert json.loads(resp.body) == {"error": message}
    resp = await raw(vision_fake, "POST", "/api/chat", {**body, "stream": False})
    assert (resp.status, resp.headers["content-type"]) == (500, JSON_CT)
    assert json.loads(resp.body) == {"error": message}
    assert len(vision_fake.chat_requests) == 2
    assert vision_fake.received_images == [[[]], [[]]]
    assert vision_fake.prompt_stats == []
    assert vision_fake.loaded_models() == [f"{model}:latest" if ":" not in model else model]


async def test_only_the_images_of_messages_kept_after_truncation_are_read(
    vision_fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """Images count in the context budget; a message dropped to fit num_ctx takes its images
    with it, even one that would not decode."""
    body = {
        "model": "gemma3",
        "stream": False,
        "options": {"num_ctx": 300},
        "messages": [user("old", "aGVsbG8="), user("new", image_b64("PNG", (2, 2)))],
    }
    async with session.post(f"{vision_fake.url}/api/chat", json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["message"]["content"] == "You said: new (and I see 1 image)"
    assert answer["prompt_eval_count"] == 2 + IMAGE_TOKENS  # "user new" and its image
    assert vision_fake.received_images == [[[], [(2, 2, "png")]]]
    stats = vision_fake.prompt_stats[0]
    assert (stats.requested, stats.truncated) == (2 * (2 + IMAGE_TOKENS), True)


async def test_invalid_base64_is_still_a_400_on_a_vision_model(vision_fake: FakeOllama) -> None:
    body = {"model": "gemma3", "messages": [user("look", image_b64(), "not base64!")]}
    resp = await raw(vision_fake, "POST", "/api/chat", body)
    assert (resp.status, resp.headers["content-type"]) == (400, JSON_CT)
    assert json.loads(resp.body) == {"error": "illegal base64 data at input byte 3"}
    assert vision_fake.chat_requests == [] and vision_fake.received_images == []


async def test_llama32_vision_takes_one_image_per_message(
    vision_fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    """chatPrompt refuses two images in one message for the mllama family: a 500 ``c.JSON``
    once the model is loaded, streaming or not. One per message is fine."""
    two = user("compare", image_b64(), image_b64("JPEG"))
    resp = await raw(
        vision_fake, "POST", "/api/chat", {"model": "llama3.2-vision", "messages": [two]}
    )
    assert (resp.status, resp.headers["content-type"]) == (500, JSON_CT)
    assert json.loads(resp.body) == {
        "error": "this model only supports one image while more than one image requested"
    }
    assert vision_fake.loaded_models() == ["llama3.2-vision:latest"]
    status, _, answer = await chat_json(
        session,
        vision_fake,
        "llama3.2-vision",
        user("this", image_b64()),
        {"role": "assistant", "content": "a square"},
        user("and this", image_b64("JPEG")),
    )
    assert (status, answer["message"]["content"]) == (
        200,
        "You said: and this (and I see 2 images)",
    )
    assert vision_fake.received_images[1] == [[(64, 32, "png")], [], [(64, 32, "jpeg")]]


def test_images_are_prompt_tokens_the_prompt_cache_tells_apart() -> None:
    """The same image again is reused from the cache like text; another image at the same
    place is evaluated again from there on."""
    first, second = image_b64("PNG", (8, 8)), image_b64("PNG", (9, 9))

    async def go(fake: FakeOllama) -> list[int]:
        counts = []
        async with aiohttp.ClientSession() as http:
            history = [user("look", first)]
            for _ in range(2):
                status, _, answer = await chat_json(http, fake, "gemma3", *history)
                assert status == 200
                counts.append(answer["prompt_eval_count"])
                history += [answer["message"], user("again")]
            history[0] = user("look", second)
            counts.append((await chat_json(http, fake, "gemma3", *history))[2]["prompt_eval_count"])
        return counts

    with FakeOllama(models=(), vision_models=["gemma3"]) as fake:
        counts = asyncio.run(go(fake))
        stats = fake.prompt_stats
    one = 2 + IMAGE_TOKENS  # user look + the image
    assert count_prompt_tokens([user("look", first)]) == one
    assert counts[:2] == [one, 2]  # then only "user again" (the answer was cached)
    assert (stats[2].cached, counts[2]) == (1, stats[2].total - 1)  # only "user" is shared
