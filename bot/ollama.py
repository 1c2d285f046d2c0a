"""The Ollama client: the only module that speaks HTTP to Ollama.

One aiohttp session, ``POST /api/chat`` streamed as NDJSON, and a small error hierarchy that
callers branch on (the Discord layer maps each class to one user message).
Protocol facts come from ``shared/reference/ollama-api.md``; section numbers below refer to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .ndjson import NdjsonDecoder, NdjsonError

log = logging.getLogger(__name__)

USER_AGENT = "ollacord/0.1 (+aiohttp)"


# --- errors -------------------------------------------------------------------------------


class OllamaError(Exception):
    """Base of every failure talking to Ollama."""

    @property
    def label(self) -> str:  # placeholder until the transport branch lands
        if isinstance(self, StreamInterrupted):
            return f"stream_{self.kind}"
        if isinstance(self, OllamaBusy):
            return "busy"
        if isinstance(self, OllamaRequestError):
            return f"http_{self.status}"
        names = {
            OllamaUnavailable: "unavailable",
            ModelNotFound: "model_not_found",
            OllamaTimeout: "timeout",
        }
        return next((v for k, v in names.items() if isinstance(self, k)), "other")


class OllamaUnavailable(OllamaError):
    """Ollama could not be reached (refused, DNS, connect timeout, closed before answering)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach Ollama at {url}: {reason}")
        self.url = url
        self.reason = reason


class ModelNotFound(OllamaError):
    """The model is not pulled (404 on /api/chat, either wording of §4.1 row 5)."""

    def __init__(self, model: str, detail: str = "") -> None:
        super().__init__(f"model {model!r} not found" + (f" ({detail})" if detail else ""))
        self.model = model


class OllamaRequestError(OllamaError):
    """Ollama answered with an HTTP error status (§4.1): 400 bad request, 500 failures, ..."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Ollama answered {status}: {message}")
        self.status = status
        self.message = message


class OllamaBusy(OllamaRequestError):
    """503: Ollama's request queue is full (OLLAMA_MAX_QUEUE); retry later."""


class OllamaTimeout(OllamaError):
    """No bytes arrived for ``read_timeout`` seconds (a hung server or a very slow load)."""

    def __init__(self, seconds: float, *, started: bool) -> None:
        where = "in the middle of the reply" if started else "before answering"
        super().__init__(f"Ollama sent nothing for {seconds:g} s {where}")
        self.seconds = seconds
        self.started = started


class StreamInterrupted(OllamaError):
    """The stream started, then ended without ``done:true`` (§4.5, §7b).

    ``kind`` is one of: ``"model_error"`` (an ``{"error"}`` line after a 200),
    ``"incomplete"`` (clean EOF without a done line), ``"dropped"`` (the connection was cut),
    ``"malformed"`` (a line that is not JSON).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"stream interrupted ({kind}): {detail}")
        self.kind = kind
        self.detail = detail


# --- stream values ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatChunk:
    """One event of a chat stream, with every optional field defaulted (metrics are omitempty)."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    done: bool = False
    done_reason: str = ""
    metrics: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChatChunk:
        message = obj.get("message") or {}
        metrics = {
            key: value
            for key in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            )
            if isinstance(value := obj.get(key), int)
        }
        return cls(
            content=str(message.get("content") or ""),
            thinking=str(message.get("thinking") or ""),
            tool_calls=tuple(message.get("tool_calls") or ()),
            done=bool(obj.get("done")),
            done_reason=str(obj.get("done_reason") or ""),
            metrics=metrics,
        )


@dataclass(frozen=True)
class PullProgress:
    """One line of ``/api/pull`` progress. ``total``/``completed`` are bytes of one layer."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PullProgress:
        return cls(
            status=str(obj.get("status", "")),
            digest=str(obj.get("digest", "")),
            total=int(obj.get("total") or 0),
            completed=int(obj.get("completed") or 0),
        )


# --- client -------------------------------------------------------------------------------


class OllamaClient:
    """Talks to one Ollama server over one aiohttp session (created lazily, closed by close()).

    Timeouts: no total timeout (a cold load plus a long answer can take minutes), a connect
    timeout, and an idle-read timeout that restarts with every read. 503 is retried before
    any byte of the answer is used, with the given delays.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        busy_retry_delays: Sequence[float] = (1.0, 3.0),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.busy_retry_delays = tuple(busy_retry_delays)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Ollama (Go net/http) keeps idle connections open; reuse them for a minute.
                connector=aiohttp.TCPConnector(keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
                ),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = None,
    ) -> AsyncGenerator[ChatChunk, None]:
        """Stream ``POST /api/chat``: yields every chunk up to and including the ``done`` one.

        Raises an :class:`OllamaError` subclass for every failure; a stream that ends without
        ``done:true`` raises :class:`StreamInterrupted` after the chunks it did deliver.
        """
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        if options:
            body["options"] = dict(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if think is not None:
            body["think"] = think
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            try:
                async for chunk in self._stream_once(model, payload):
                    yield chunk
                return
            except OllamaBusy:
                if attempt >= len(self.busy_retry_delays):
                    raise
                delay = self.busy_retry_delays[attempt]
                attempt += 1
                log.warning("event=ollama_busy attempt=%d retry_in=%.1fs", attempt, delay)
                await asyncio.sleep(delay)

    async def _stream_once(self, model: str, payload: bytes) -> AsyncGenerator[ChatChunk, None]:
        url = f"{self.base_url}/api/chat"
        session = self._get_session()
        started = False
        try:
            async with session.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json", "Accept": "application/x-ndjson"},
            ) as response:
                if response.status >= 400:
                    raise await self._status_error(model, response)
                decoder = NdjsonDecoder()
                done = False
                async for data in response.content.iter_any():
                    started = True
                    for obj in decoder.feed(data):
                        chunk = self._parse(obj)
                        yield chunk
                        done = done or chunk.done
                leftover = decoder.pending
                for obj in decoder.finish():
                    chunk = self._parse(obj)
                    yield chunk
                    done = done or chunk.done
                if not done:
                    if leftover and "ndjson" in response.headers.get("Content-Type", ""):
                        raise StreamInterrupted(
                            "dropped", "the stream ended in the middle of a line"
                        )
                    raise StreamInterrupted(
                        "incomplete", "Ollama ended the reply without finishing it"
                    )
        except NdjsonError as exc:
            raise StreamInterrupted("malformed", str(exc)) from exc
        except aiohttp.ClientPayloadError as exc:
            raise StreamInterrupted("dropped", f"the connection was cut ({exc})") from exc
        except aiohttp.ServerDisconnectedError as exc:
            if started:
                raise StreamInterrupted("dropped", "Ollama closed the connection") from exc
            raise OllamaUnavailable(
                self.base_url, "it closed the connection without answering"
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise OllamaUnavailable(
                self.base_url, f"no connection after {self.connect_timeout:g} s"
            ) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise OllamaTimeout(self.read_timeout, started=started) from exc
        except aiohttp.ClientConnectorError as exc:
            raise OllamaUnavailable(self.base_url, _connector_reason(exc)) from exc
        except aiohttp.ClientOSError as exc:
            if started:
                raise StreamInterrupted("dropped", f"the connection failed ({exc})") from exc
            raise OllamaUnavailable(self.base_url, str(exc) or type(exc).__name__) from exc
        except aiohttp.InvalidURL as exc:
            raise OllamaUnavailable(self.base_url, "the URL is not valid") from exc

    @staticmethod
    def _parse(obj: Mapping[str, Any]) -> ChatChunk:
        if "error" in obj:
            # §4.1 row 16: an error after the first event keeps status 200 and ends the stream.
            raise StreamInterrupted("model_error", str(obj["error"]))
        return ChatChunk.from_json(obj)

    async def _status_error(self, model: str, response: aiohttp.ClientResponse) -> OllamaError:
        raw = await response.read()
        text = raw.decode("utf-8", "replace").strip()
        message = text
        is_json = False
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(parsed, dict) and "error" in parsed:
                message = str(parsed["error"])
                is_json = True
        message = message or response.reason or f"HTTP {response.status}"
        if response.status == 404 and is_json:
            # Branch on the status, not the wording: it changed in v0.12 (§0).
            return ModelNotFound(model, message)
        if response.status == 404:
            return OllamaRequestError(
                404, f"{message} (is {self.base_url} an Ollama server? /api/chat does not exist)"
            )
        if response.status == 503:
            return OllamaBusy(503, message)
        return OllamaRequestError(response.status, message[:500])

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Stream ``POST /api/pull`` progress (§6). Raises :class:`OllamaError` on failure,
        including the ``{"error"}`` line an unknown model gets after a 200."""
        session = self._get_session()
        try:
            async with session.post(
                f"{self.base_url}/api/pull",
                data=json.dumps({"model": model, "stream": True}).encode(),
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status >= 400:
                    raise await self._status_error(model, response)
                decoder = NdjsonDecoder()
                success = False
                async for data in response.content.iter_any():
                    for obj in decoder.feed(data):
                        if "error" in obj:
                            raise OllamaRequestError(response.status, str(obj["error"]))
                        progress = PullProgress.from_json(obj)
                        success = success or progress.status == "success"
                        yield progress
                for obj in decoder.finish():
                    if "error" in obj:
                        raise OllamaRequestError(response.status, str(obj["error"]))
                    progress = PullProgress.from_json(obj)
                    success = success or progress.status == "success"
                    yield progress
                if not success:
                    raise StreamInterrupted("incomplete", "the pull ended before it succeeded")
        except NdjsonError as exc:
            raise StreamInterrupted("malformed", str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise OllamaUnavailable(self.base_url, _connector_reason(exc)) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise StreamInterrupted("dropped", f"the connection was cut ({exc})") from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise OllamaTimeout(self.read_timeout, started=True) from exc

    async def preload(self, model: str, keep_alive: str | float | None = None) -> None:
        """Load the model into memory now (a chat request with no messages, §4.2), so the
        first user does not wait for the load."""
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        try:
            async with self._get_session().post(
                f"{self.base_url}/api/chat",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status >= 400:
                    raise await self._status_error(model, response)
                await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise OllamaUnavailable(self.base_url, _connector_reason(exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OllamaUnavailable(self.base_url, str(exc) or type(exc).__name__) from exc

    async def context_length(self, model: str) -> int | None:
        """The model's trained context length from ``POST /api/show`` (``model_info``'s
        ``<arch>.context_length``), or None if the server does not say."""
        data = await self._post_json("/api/show", {"model": model}, model)
        info = data.get("model_info") or {}
        arch = info.get("general.architecture")
        value = info.get(f"{arch}.context_length") if arch else None
        if not isinstance(value, int):
            value = next(
                (
                    v
                    for k, v in info.items()
                    if k.endswith(".context_length") and isinstance(v, int)
                ),
                None,
            )
        return value if isinstance(value, int) and value > 0 else None

    async def complete(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
    ) -> tuple[str, Mapping[str, int]]:
        """A non-streamed ``/api/chat`` (§3): the whole answer at once, and its metrics."""
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "stream": False,
            "think": False,
        }
        if options:
            body["options"] = dict(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        data = await self._post_json("/api/chat", body, model)
        chunk = ChatChunk.from_json(data)
        return chunk.content, chunk.metrics

    async def _post_json(self, path: str, body: Mapping[str, Any], model: str) -> dict[str, Any]:
        try:
            async with self._get_session().post(
                f"{self.base_url}{path}",
                data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status >= 400:
                    raise await self._status_error(model, response)
                data = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            raise OllamaUnavailable(self.base_url, _connector_reason(exc)) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise OllamaTimeout(self.read_timeout, started=False) from exc
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise OllamaUnavailable(self.base_url, str(exc) or type(exc).__name__) from exc
        if not isinstance(data, dict):
            raise OllamaRequestError(200, f"unexpected answer from {path}")
        if "error" in data:
            raise OllamaRequestError(200, str(data["error"]))
        return data

    async def list_models(self) -> list[str]:
        """Names from ``GET /api/tags`` (always tagged, e.g. ``llama3.2:latest``)."""
        data = await self._get_json("/api/tags")
        return [str(m.get("name", "")) for m in data.get("models") or [] if m.get("name")]

    async def version(self) -> str:
        data = await self._get_json("/api/version")
        return str(data.get("version", "unknown"))

    async def _get_json(self, path: str) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with self._get_session().get(url) as response:
                if response.status >= 400:
                    raise await self._status_error("", response)
                data = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            raise OllamaUnavailable(self.base_url, _connector_reason(exc)) from exc
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise OllamaUnavailable(self.base_url, str(exc) or type(exc).__name__) from exc
        if not isinstance(data, dict):
            raise OllamaUnavailable(self.base_url, f"unexpected answer from {path}")
        return data


def model_matches(configured: str, available: str) -> bool:
    """Compare names as Ollama does: case-insensitive, ``:latest`` implied (§7b "Names")."""

    def normalise(name: str) -> str:
        name = name.strip().lower()
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    return normalise(configured) == normalise(available)


def _connector_reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    return str(os_error) or type(os_error).__name__
