"""HTTP to Ollama: the one place a request is sent and the one place its failures are named.

Every endpoint (chat, show, tags, version, pull, preload) goes through one context manager,
``OllamaTransport._exchange``, so a transport failure is the same error class whichever endpoint
it hit:

- refused, DNS, connect timeout, invalid URL: :class:`OllamaUnavailable`;
- the connection closed or failed before the first byte of the body: :class:`OllamaUnavailable`,
  after it: :class:`StreamInterrupted` ``"dropped"`` (the answer had started);
- no bytes for ``read_timeout`` seconds (in a streamed body: noticed within a quarter of it
  more, at most 5 s): :class:`OllamaTimeout` (``started`` as above);
- a body that is not JSON: :class:`StreamInterrupted` ``"malformed"``;
- an HTTP error status: see :meth:`OllamaTransport._status_error`.

Protocol facts: ``docs/ollama-protocol.md`` (anchors below refer to it).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import orjson

from .ndjson import NdjsonDecoder, NdjsonError
from .ollama_errors import (
    ModelNotFound,
    OllamaBusy,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
)
from .read_pacing import IdleWatch, ReadTicker

USER_AGENT = "ollacord/0.1 (+aiohttp)"
JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"

# What the transport translates. Our own errors are let through first: OllamaTimeout is a
# TimeoutError and would otherwise be translated again.
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, NdjsonError)


class _Exchange:
    """One answered request: its response, and whether any of the body has arrived yet."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.started = False
        self.ticker: ReadTicker | None = None
        self.watch: IdleWatch | None = None
        self._last_read = 0.0
        self._broken: aiohttp.ClientPayloadError | None = None

    @property
    def is_ndjson(self) -> bool:
        return "ndjson" in self.response.headers.get("Content-Type", "")

    async def read(self) -> bytes:
        """The next bytes of the body as they arrive (``b""`` at its end); with a ticker,
        everything that arrived up to its next beat."""
        ticker, watch = self.ticker, self.watch
        loop = asyncio.get_running_loop()
        if ticker is not None and self.started and ticker.due(self._last_read, loop.time()):
            await self._await_beat(ticker)
        if watch is None:
            data = await self._readany()
        else:
            watch.waiting(self.response, loop.time())
            try:
                data = await self._readany()
            finally:
                watch.done(self.response)
        if data:
            self.started = True
            self._last_read = loop.time()
        return data

    async def _readany(self) -> bytes:
        """aiohttp's ``readany``, except that what arrived before the connection broke comes
        first: aiohttp raises at once and leaves it unread, and the last tokens before a cut
        would be lost. The error comes with the next read."""
        if self._broken is not None:
            raise self._broken
        content = self.response.content
        try:
            return await content.readany()
        except aiohttp.ClientPayloadError as exc:
            # aiohttp's private buffer: the bytes received and not read yet.
            unread: collections.deque[bytes] | None = getattr(content, "_buffer", None)
            if not unread:
                raise
            data = b"".join(unread)[getattr(content, "_buffer_offset", 0) :]
            unread.clear()
            self._broken = exc
            return data

    async def _await_beat(self, ticker: ReadTicker) -> None:
        """Wait for the beat with the socket left unread: the kernel gathers what arrives and
        one ``recv`` takes it all, where a socket left readable costs a wake-up, a ``recv`` and
        a parse per packet even when nobody reads the buffer (receiving a hundred streams of
        tokens cost 74 µs per token that way, 43 µs paused; over TLS the socket is still read,
        only the handing over waits). Reading resumes before the read that follows; if aiohttp
        had paused it for a full buffer, that read drains it anyway."""
        connection = self.response.connection
        transport = None if connection is None else connection.transport
        if transport is None:  # the body is complete and the connection already released
            await ticker.beat()
            return
        transport.pause_reading()
        try:
            await ticker.beat()
        finally:
            transport.resume_reading()  # a no-op on a transport closed meanwhile

    @contextmanager
    def watched(self, watch: IdleWatch) -> Iterator[None]:
        """Hand the idle-read timeout from aiohttp (a timer moved on every packet) to
        ``watch`` now that the headers are in. aiohttp's timer still guards the wait for the
        headers; its pending one is dropped by the next packet."""
        connection = self.response.connection
        if connection is None or connection.protocol is None:
            yield
            return
        connection.protocol.read_timeout = None
        self.watch = watch
        with watch.watching(self.response):
            yield


class OllamaTransport:
    """Owns the aiohttp session to one Ollama server (created lazily, closed by :meth:`close`).

    Timeouts: no total timeout (a cold load plus a long answer can take minutes), a connect
    timeout, and an idle-read timeout: no byte for ``read_timeout`` seconds. Until the headers
    arrive it is aiohttp's (changes take effect with the next session, i.e. after
    :meth:`close`); in a streamed body it is the :class:`IdleWatch`, which checks every
    ``min(read_timeout / 4, 5 s)`` (so it fires within that much after the timeout) and takes
    a change with the next stream.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        user_agent: str = USER_AGENT,
        read_beat: float = 0.0,
    ) -> None:
        self.base_url = base_url
        self.ticker = ReadTicker(read_beat) if read_beat > 0 else None
        self._watch = IdleWatch(read_timeout)  # its timeout follows read_timeout per stream
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = value.rstrip("/")

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The session, once a request opened it (None before and after :meth:`close`)."""
        return self._session

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Ollama (Go net/http) keeps idle connections open; reuse them for a minute.
                # The system's resolver, as curl would use: an Ollama on the LAN is often
                # reached by an mDNS name (gpu-box.local), which aiodns, aiohttp's choice when
                # installed, cannot resolve (aio-libs/aiohttp#10186).
                connector=aiohttp.TCPConnector(
                    keepalive_timeout=60, resolver=aiohttp.ThreadedResolver()
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
                ),
                headers={"User-Agent": self.user_agent},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def stream(
        self, path: str, body: Mapping[str, Any], *, model: str = ""
    ) -> AsyncGenerator[dict[str, Any], None]:
        """``POST`` ``body`` to ``path`` and yield each JSON object of the NDJSON answer as
        it arrives. A 200 ``application/json`` answer (a load reply, an early error) yields its
        one object. Close the generator (``aclosing``) to abandon the request."""
        async with aclosing(self.stream_reads(path, body, model=model)) as reads:
            async for objects in reads:
                for obj in objects:
                    yield obj

    async def stream_reads(
        self, path: str, body: Mapping[str, Any], *, model: str = "", beat: bool = False
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """As :meth:`stream`, the objects of each read together (never an empty list). With
        ``beat``, reads keep the transport's read beat (a chat's tokens; not a pull's progress)."""
        async with self._exchange("POST", path, body, model=model, accept=NDJSON_TYPE) as exchange:
            exchange.ticker = self.ticker if beat else None
            self._watch.timeout = self.read_timeout
            with exchange.watched(self._watch):
                decoder = NdjsonDecoder()
                while data := await exchange.read():
                    try:
                        objects = decoder.feed(data)
                    except NdjsonError as exc:
                        # The lines before the bad one are the start of the answer: hand them
                        # over, then report the bad line (the caller shows the text with a
                        # cut-off note).
                        if exc.parsed:
                            yield list(exc.parsed)
                        raise
                    if objects:
                        yield objects
                if last := self._last_line(decoder, exchange.is_ndjson, path):
                    yield last

    @staticmethod
    def _last_line(decoder: NdjsonDecoder, is_ndjson: bool, path: str) -> list[dict[str, Any]]:
        """What is left at EOF. A JSON answer has no "\n" (its one object is whole). In NDJSON
        every line ends with "\n" (#stream), so a fragment means the connection was cut,
        unless it is the stream's last word (``done`` / pull's ``success``) with only its
        "\n" lost: the answer is complete then."""
        if not decoder.pending.strip() or not is_ndjson:
            return decoder.finish()
        try:
            objects = decoder.finish()
        except NdjsonError:
            objects = []
        if len(objects) == 1 and (
            objects[0].get("done") is True or objects[0].get("status") == "success"
        ):
            return objects
        raise StreamInterrupted(
            "dropped", "the stream ended in the middle of a line", endpoint=path
        )

    async def request_json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        model: str = "",
    ) -> dict[str, Any]:
        """Send one request and return its JSON object answer. A 200 whose object carries
        ``"error"`` raises :class:`OllamaRequestError`, as the official clients do."""
        async with self._exchange(method, path, body, model=model, accept=JSON_TYPE) as exchange:
            raw = bytearray()
            while data := await exchange.read():
                raw += data
            obj = _decode_object(bytes(raw))
            status = exchange.response.status
        if "error" in obj:
            raise OllamaRequestError(status, str(obj["error"]), url=self.base_url, endpoint=path)
        return obj

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        model: str,
        accept: str,
    ) -> AsyncIterator[_Exchange]:
        """Send the request; yield its successful response. Every failure of the transport,
        while sending or while the caller reads the body, leaves as one of our errors."""
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = JSON_TYPE
            data = orjson.dumps(body)  # UTF-8, like ensure_ascii=False
        exchange: _Exchange | None = None
        try:
            async with self._get_session().request(
                method, f"{self.base_url}{path}", data=data, headers=headers
            ) as response:
                if response.status >= 400:
                    raise await self._status_error(response, path, model)
                exchange = _Exchange(response)
                yield exchange
        except OllamaError:
            raise
        except _TRANSPORT_ERRORS as exc:
            started = exchange is not None and exchange.started
            raise self._translate(exc, path, started=started) from exc

    def _translate(self, exc: Exception, path: str, *, started: bool) -> OllamaError:
        """The one mapping from aiohttp's (and the decoder's) exceptions to ours. Order
        matters: aiohttp's connect timeout is a TimeoutError too, and its connector error is a
        ClientOSError too (which otherwise means a failure mid-request)."""
        url = self.base_url
        if isinstance(exc, NdjsonError):
            return StreamInterrupted("malformed", str(exc), endpoint=path)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            reason = f"no connection after {self.connect_timeout:g} s"
            return OllamaUnavailable(url, reason, endpoint=path)
        if isinstance(exc, TimeoutError):
            return OllamaTimeout(self.read_timeout, started=started, endpoint=path)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return OllamaUnavailable(url, _connector_reason(exc), endpoint=path)
        if isinstance(exc, aiohttp.InvalidURL):
            return OllamaUnavailable(url, "the URL is not valid", endpoint=path)
        # The connection closed or failed while the request was under way.
        detail = str(exc) or type(exc).__name__
        if started:
            return StreamInterrupted("dropped", f"the connection was cut ({detail})", endpoint=path)
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            detail = "it closed the connection without answering"
        return OllamaUnavailable(url, detail, endpoint=path)

    async def _status_error(
        self, response: aiohttp.ClientResponse, path: str, model: str
    ) -> OllamaError:
        """An HTTP error status as our error. Ollama's bodies are ``{"error": "..."}``, but a
        404/405 from its router is plain text and proxies send HTML (#errors): fall back to the
        raw text. Branch on the status, not the wording: it changed in v0.12 (#versions)."""
        raw = await response.read()
        text = raw.decode("utf-8", "replace").strip()
        server_message = _error_field(text)
        message = (server_message if server_message is not None else text) or (
            response.reason or f"HTTP {response.status}"
        )
        where: dict[str, Any] = {
            "url": self.base_url,
            "endpoint": path,
            "from_server": server_message is not None,
        }
        if response.status == 404 and server_message is not None and model:
            return ModelNotFound(model, message, endpoint=path)
        if response.status == 404 and server_message is None:
            hint = f"is {self.base_url} an Ollama server? {path} does not exist"
            return OllamaRequestError(404, f"{message} ({hint})", **where)
        if response.status == 503:
            return OllamaBusy(503, message, **where)
        return OllamaRequestError(response.status, message[:500], **where)


def _error_field(text: str) -> str | None:
    """The ``error`` of a JSON ``{"error": ...}`` body, or None if the body is not one."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return None


def _decode_object(raw: bytes) -> dict[str, Any]:
    """A whole JSON body as an object. Raises NdjsonError so that it is translated like a
    malformed stream line."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8
        preview = raw[:120].decode("utf-8", "replace")
        raise NdjsonError(f"not a JSON answer: {preview!r} ({exc})") from None
    if not isinstance(obj, dict):
        raise NdjsonError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _connector_reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    return str(os_error) or type(os_error).__name__
