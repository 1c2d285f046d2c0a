"""The Ollama client: what each endpoint is asked and what its answer means.

Sending, timeouts and the naming of failures live in :mod:`bot.ollama_transport`; the error
classes in :mod:`bot.ollama_errors`, re-exported here so that ``from bot.ollama import X`` works
for every error (the Discord layer maps each class to one user message).
Protocol facts: ``docs/ollama-protocol.md`` (anchors below refer to it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .chat_chunk import ChatChunk, ErrorLine, merged_chunks
from .ollama_errors import (
    ModelNotFound,
    OllamaBusy,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
)
from .ollama_transport import USER_AGENT, OllamaTransport

__all__ = [
    "USER_AGENT",
    "ChatChunk",
    "ModelNotFound",
    "OllamaBusy",
    "OllamaClient",
    "OllamaError",
    "OllamaRequestError",
    "OllamaTimeout",
    "OllamaUnavailable",
    "PullProgress",
    "StreamInterrupted",
    "model_matches",
]

log = logging.getLogger(__name__)

CHAT = "/api/chat"
PULL = "/api/pull"
SHOW = "/api/show"
TAGS = "/api/tags"
VERSION = "/api/version"
PS = "/api/ps"


# --- stream values ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the bot needs to know about a model (from ``/api/show``)."""

    context_length: int | None = None
    capabilities: frozenset[str] = frozenset()

    @property
    def vision(self) -> bool:
        return "vision" in self.capabilities

    @property
    def thinking(self) -> bool:
        return "thinking" in self.capabilities


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


class Ollama(Protocol):
    """The Ollama API the rest of the bot uses: one :class:`OllamaClient`, or the pool of
    several backends (:class:`bot.ollama_pool.OllamaPool`). ``route`` names the conversation a
    request belongs to (the pool sends it where its prompt cache is; a client ignores it)."""

    @property
    def base_url(self) -> str: ...

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = None,
        route: str | None = None,
    ) -> AsyncGenerator[ChatChunk, None]: ...

    async def complete(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = False,
        route: str | None = None,
    ) -> tuple[str, Mapping[str, int]]: ...

    async def show(self, model: str) -> ModelInfo: ...

    async def list_models(self) -> list[str]: ...

    def pull(self, model: str) -> AsyncGenerator[PullProgress, None]: ...

    async def preload(self, model: str, keep_alive: str | float | None = None) -> None: ...

    async def version(self) -> str: ...

    async def describe(self) -> list[str]:
        """One line per server, for admins' /status."""
        ...

    async def close(self) -> None: ...


class OllamaClient:
    """Talks to one Ollama server through one :class:`OllamaTransport` (its aiohttp session is
    created lazily and closed by :meth:`close`).

    Timeouts: no total timeout (a cold load plus a long answer can take minutes), a connect
    timeout, and an idle-read timeout (no byte for ``read_timeout`` seconds; see
    :class:`OllamaTransport`). A streamed chat answered
    503 is retried before any byte of the answer is used, with the given delays.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        read_beat: float = 0.0,
        busy_retry_delays: Sequence[float] = (1.0, 3.0),
    ) -> None:
        self._transport = OllamaTransport(
            base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            read_beat=read_beat,
        )
        self.busy_retry_delays = tuple(busy_retry_delays)

    # The transport owns these; they stay settable here (tests move a client to a new server).
    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._transport.base_url = value

    @property
    def connect_timeout(self) -> float:
        return self._transport.connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, value: float) -> None:
        self._transport.connect_timeout = value

    @property
    def read_timeout(self) -> float:
        return self._transport.read_timeout

    @read_timeout.setter
    def read_timeout(self, value: float) -> None:
        self._transport.read_timeout = value

    @property
    def _session(self) -> aiohttp.ClientSession | None:
        """The transport's open session, if any (tests check that close() releases it)."""
        return self._transport.session

    async def close(self) -> None:
        await self._transport.close()

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = None,
        route: str | None = None,
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
        attempt = 0
        while True:
            try:
                async with aclosing(self._stream_once(model, body)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except OllamaBusy:
                # A 503 comes before the first byte: nothing was yielded, retrying is safe.
                if attempt >= len(self.busy_retry_delays):
                    raise
                delay = self.busy_retry_delays[attempt]
                attempt += 1
                log.warning("event=ollama_busy attempt=%d retry_in=%.1fs", attempt, delay)
                await asyncio.sleep(delay)

    async def _stream_once(
        self, model: str, body: Mapping[str, Any]
    ) -> AsyncGenerator[ChatChunk, None]:
        done = False
        reads = self._transport.stream_reads(CHAT, body, model=model, beat=True)
        async with aclosing(reads):
            async for objects in reads:
                try:
                    for chunk in merged_chunks(objects):
                        yield chunk
                        done = done or chunk.done
                except ErrorLine as exc:
                    # #error-line: an error after the first event keeps status 200, ends it.
                    raise StreamInterrupted("model_error", str(exc), endpoint=CHAT) from None
        if not done:
            raise StreamInterrupted(
                "incomplete", "Ollama ended the reply without finishing it", endpoint=CHAT
            )

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Stream ``POST /api/pull`` progress (#pull). Raises :class:`OllamaError` on failure,
        including the ``{"error"}`` line an unknown model gets after a 200."""
        success = False
        body = {"model": model, "stream": True}
        async with aclosing(self._transport.stream(PULL, body, model=model)) as lines:
            async for obj in lines:
                if "error" in obj:
                    # Shown to the admin as is: "pull model manifest: file does not exist".
                    raise OllamaRequestError(
                        200, str(obj["error"]), url=self.base_url, endpoint=PULL
                    )
                progress = PullProgress.from_json(obj)
                success = success or progress.status == "success"
                yield progress
        if not success:
            raise StreamInterrupted(
                "incomplete", "the pull ended before it succeeded", endpoint=PULL
            )

    async def preload(self, model: str, keep_alive: str | float | None = None) -> None:
        """Load the model into memory now (a chat request with no messages, #loading), so the
        first user does not wait for the load."""
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        await self._transport.request_json("POST", CHAT, body, model=model)

    async def show(self, model: str) -> ModelInfo:
        """What ``POST /api/show`` says of a model: its trained context length (``model_info``'s
        ``<arch>.context_length``, None if not said) and its capabilities (``vision``,
        ``thinking``, ...; empty from servers too old to say)."""
        data = await self._transport.request_json("POST", SHOW, {"model": model}, model=model)
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
        length = value if isinstance(value, int) and value > 0 else None
        capabilities = frozenset(str(c) for c in data.get("capabilities") or ())
        return ModelInfo(length, capabilities)

    async def context_length(self, model: str) -> int | None:
        """The model's trained context length (see :meth:`show`)."""
        return (await self.show(model)).context_length

    async def complete(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = False,
        route: str | None = None,
    ) -> tuple[str, Mapping[str, int]]:
        """A non-streamed ``/api/chat`` (#non-stream): the whole answer at once, and its metrics.
        ``think`` as for :meth:`chat` (None: the server's default)."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": False}
        if think is not None:
            body["think"] = think
        if options:
            body["options"] = dict(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        data = await self._transport.request_json("POST", CHAT, body, model=model)
        chunk = ChatChunk.from_json(data)
        return chunk.content, chunk.metrics

    async def list_models(self) -> list[str]:
        """Names from ``GET /api/tags`` (always tagged, e.g. ``llama3.2:latest``)."""
        data = await self._transport.request_json("GET", TAGS)
        return [str(m.get("name", "")) for m in data.get("models") or [] if m.get("name")]

    async def loaded_models(self) -> list[str]:
        """Names from ``GET /api/ps``: the models loaded in memory now."""
        data = await self._transport.request_json("GET", PS)
        return [str(m.get("name", "")) for m in data.get("models") or [] if m.get("name")]

    async def version(self) -> str:
        data = await self._transport.request_json("GET", VERSION)
        return str(data.get("version", "unknown"))

    async def describe(self) -> list[str]:
        return [self.base_url]


def model_matches(configured: str, available: str) -> bool:
    """Compare names as Ollama does: case-insensitive, ``:latest`` implied (#names)."""

    def normalise(name: str) -> str:
        name = name.strip().lower()
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    return normalise(configured) == normalise(available)
