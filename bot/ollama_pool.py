"""Several Ollama backends behind one client: routing, failover, probing, shared slots.

``OLLAMA_URL`` may list several servers (``http://gpu1:11434#4,http://gpu2:11434#2``: each
with the generations it runs at once). Per request the pool picks a backend:

1. only backends that have the model (from ``/api/tags``, refreshed now and then);
2. the one that served this conversation's last turn, whose prompt cache holds it, unless it
   has no free slot while another has one;
3. then one with the model already loaded (``/api/ps``), then the least busy.

A backend that refuses connections, times out before its first byte or answers 5xx is marked
down and probed with ``GET /api/version`` in the background; its request goes to another
backend with no visible difference to the user. A stream that breaks after text was shown is
not retried (the text would be repeated): the reply ends with its cut-off note as before.
Slots are held through :class:`bot.backend_slots.BackendSlots`: with Redis, shared by every
process, so that two processes never overload one GPU; without, counted in this process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from functools import partial
from typing import Any

from .backend_slots import BackendSlots, SlotKeeper
from .background import Background
from .clock import Clock, Sleep
from .metrics import Metrics
from .ollama import (
    ChatChunk,
    ModelInfo,
    ModelNotFound,
    OllamaClient,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    PullProgress,
    StreamInterrupted,
    model_matches,
)
from .ollama_backend import Backend
from .ollama_pulls import pull_everywhere

log = logging.getLogger(__name__)

# Seconds between probes of a backend that is down, and between refreshes of a backend's
# model list.
PROBE_SECONDS = 5.0
REFRESH_SECONDS = 60.0
# A request finding every backend full asks again after this long (the slots may be held by
# other processes, which say nothing when they free one).
SLOT_WAIT = 0.25


def is_down(error: OllamaError) -> bool:
    """Whether a failure before the first byte means the backend itself is gone: unreachable,
    hung, or a proxy in front of it saying so (502, 504)."""
    if isinstance(error, OllamaUnavailable):
        return True
    if isinstance(error, OllamaTimeout):
        return not error.started
    if isinstance(error, StreamInterrupted):
        return error.kind == "dropped"  # (the pool only asks while no text was passed on)
    return isinstance(error, OllamaRequestError) and error.status >= 502 and error.status != 503


def fails_over(error: OllamaError) -> bool:
    """Whether a failure before any text was passed on should send the request to another
    backend: the backend is down, full, or failed this request on its side (5xx: a crashed
    runner; an error line or an end before any text), rather than the request being wrong
    (4xx) or the answer unreadable."""
    if isinstance(error, StreamInterrupted):
        return error.kind in ("dropped", "model_error", "incomplete")
    return is_down(error) or (isinstance(error, OllamaRequestError) and error.status >= 500)


class OllamaPool:
    """The Ollama client the bot uses: one backend, or several with routing and failover."""

    def __init__(
        self,
        backends: Sequence[tuple[str, int]],
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        read_beat: float = 0.0,
        slots: SlotKeeper | None = None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        client = partial(
            OllamaClient,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            read_beat=read_beat,
        )
        self.backends = [Backend(client(url), cap, metrics=metrics) for url, cap in backends]
        self.slots = BackendSlots(slots)
        self.clock = clock
        self.sleep = sleep
        self.metrics = metrics
        self._affinity: dict[str, Backend] = {}  # conversation -> the backend of its last turn
        self._probes = Background()
        self._holder = f"{os.uname().nodename}:{os.getpid()}"

    @property
    def base_url(self) -> str:
        """The first backend's URL (messages that name one server)."""
        return self.backends[0].url

    async def close(self) -> None:
        await self._probes.close()
        for backend in self.backends:
            await backend.client.close()

    # --- generation: routed, with failover -----------------------------------------------

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
        """Stream ``/api/chat`` from the backend chosen for ``route`` (a conversation)."""
        tried: set[Backend] = set()
        while True:
            backend, holder = await self._take(model, route, tried)
            started = False
            try:
                async with AsyncExitStack() as held:
                    await held.enter_async_context(self.slots.holding(backend, holder))
                    stream = backend.client.chat(
                        model, messages, options=options, keep_alive=keep_alive, think=think
                    )
                    chunks = await held.enter_async_context(aclosing(stream))
                    async for chunk in chunks:
                        started = True
                        yield chunk
                self._served(route, backend)
                return
            except OllamaError as error:
                if started or not self._fail_over(backend, error, tried):
                    raise
            finally:
                backend.finished()
                await self.slots.give_back(backend, holder)

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
        """A whole answer at once, from the backend chosen for ``route``."""
        tried: set[Backend] = set()
        while True:
            backend, holder = await self._take(model, route, tried)
            try:
                async with self.slots.holding(backend, holder):
                    answer = await backend.client.complete(
                        model, messages, options=options, keep_alive=keep_alive, think=think
                    )
                self._served(route, backend)
                return answer
            except OllamaError as error:
                if not self._fail_over(backend, error, tried):
                    raise
            finally:
                backend.finished()
                await self.slots.give_back(backend, holder)

    def _fail_over(self, backend: Backend, error: OllamaError, tried: set[Backend]) -> bool:
        """After a failure before any byte: True to try the request on another backend."""
        tried.add(backend)
        if isinstance(error, ModelNotFound):
            backend.forget_models()  # its list was stale: ask it again next time
        elif is_down(error):
            self._mark_down(backend, error)
        elif not fails_over(error):
            return False
        # Otherwise (full, or a 500 such as a crashed runner) it answered: it stays up, and
        # another backend may serve this request.
        others = [b for b in self.backends if b.up and b not in tried]
        if others and self.metrics:
            self.metrics.backend_failovers.inc()
        if others:
            log.warning(
                "event=backend_failover backend=%s cause=%r tries_next=%s",
                backend.url,
                str(error),
                ",".join(b.url for b in others),
            )
        return bool(others)

    def _served(self, route: str | None, backend: Backend) -> None:
        if route is not None:
            self._affinity[route] = backend

    # --- choosing a backend and holding its slot -----------------------------------------

    async def _take(
        self, model: str, route: str | None, tried: set[Backend]
    ) -> tuple[Backend, str]:
        """A backend for this request, with one of its slots held (waits, briefly at a time,
        while every candidate is full: another process may hold them)."""
        while True:
            candidates = await self._candidates(model, tried)
            for backend in self._ranked(candidates, model, route):
                holder = f"{self._holder}:{uuid.uuid4().hex[:8]}"
                if await self.slots.take(backend, holder):
                    backend.started()
                    return backend, holder
            await self.sleep(SLOT_WAIT)

    async def _candidates(self, model: str, tried: set[Backend]) -> list[Backend]:
        up = [b for b in self.backends if b.up and b not in tried]
        if not up:
            # Everything is down (or was tried): ask the first anyway, so the user gets its
            # error in plain words rather than a wait.
            return [next((b for b in self.backends if b not in tried), self.backends[0])]
        await asyncio.gather(*(b.refresh(self.clock, REFRESH_SECONDS) for b in up))
        having = [b for b in up if b.has(model) is not False]
        return having or up

    def _ranked(self, candidates: list[Backend], model: str, route: str | None) -> list[Backend]:
        """Best first: this conversation's last backend if it has room, then one with the
        model loaded, then the least busy."""
        last = self._affinity.get(route) if route is not None else None

        def key(backend: Backend) -> tuple[int, int, float]:
            room = backend.in_flight < backend.capacity
            return (
                0 if backend is last and room else 1,
                0 if room else 1,
                backend.in_flight / backend.capacity - (0.5 if backend.has_loaded(model) else 0.0),
            )

        return sorted(candidates, key=key)

    def _mark_down(self, backend: Backend, error: OllamaError) -> None:
        if backend.up:
            backend.down(str(error))
            self._probes.spawn(self._probe(backend))

    async def _probe(self, backend: Backend) -> None:
        """Ask a down backend for its version until it answers; then it takes requests again."""
        while not backend.up:
            await self.sleep(PROBE_SECONDS)
            try:
                await backend.client.version()
            except OllamaError as exc:
                log.info("event=backend_probe backend=%s up=false cause=%r", backend.url, str(exc))
                continue
            backend.back_up()

    # --- the rest of the API: any backend, or all of them ---------------------------------

    async def show(self, model: str) -> ModelInfo:
        info: ModelInfo = await self._first(lambda c: c.show(model), model)
        return info

    async def context_length(self, model: str) -> int | None:
        return (await self.show(model)).context_length

    async def version(self) -> str:
        version: str = await self._first(lambda c: c.version(), None)
        return version

    async def list_models(self) -> list[str]:
        """Every model any backend has (the union; each name once)."""
        results = await asyncio.gather(
            *(b.client.list_models() for b in self.backends), return_exceptions=True
        )
        names = [r for r in results if isinstance(r, list)]
        if not names:
            error = next(r for r in results if isinstance(r, BaseException))
            raise error
        merged: list[str] = []
        for name in (n for group in names for n in group):
            if not any(model_matches(name, seen) for seen in merged):
                merged.append(name)
        return merged

    async def preload(self, model: str, keep_alive: str | float | None = None) -> None:
        """Load the model on every backend that has it."""
        targets = [b for b in self.backends if b.up] or self.backends
        await asyncio.gather(*(b.client.preload(model, keep_alive) for b in targets))

    def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Pull on every backend at once, with one progress (see :func:`pull_everywhere`)."""
        return pull_everywhere(self.backends, model)

    async def _first(self, call: Any, model: str | None) -> Any:
        """``call(client)`` on the first backend that answers (having the model, if named)."""
        up = [b for b in self.backends if b.up] or self.backends
        ordered = sorted(up, key=lambda b: b.has(model) is False if model else False)
        error: OllamaError | None = None
        for backend in ordered:
            try:
                return await call(backend.client)
            except OllamaError as exc:
                error = exc
                if not fails_over(exc):
                    break
        assert error is not None
        raise error

    async def describe(self) -> list[str]:
        """One line per backend, for /status (admins), with its models as recently known."""
        up = [b for b in self.backends if b.up]
        await asyncio.gather(*(b.refresh(self.clock, REFRESH_SECONDS) for b in up))
        return [b.describe() for b in self.backends]
