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
Slots are held through a :class:`SlotKeeper`: with Redis, shared by every process (each slot
renewed while its stream runs, and freed by its TTL if the process dies), so that two processes
never overload one GPU; without, counted in this process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, nullcontext
from typing import Any, Protocol

from .background import Background
from .clock import Clock, Sleep
from .coordination import renewing
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
    model_matches,
)
from .ollama_backend import Backend

log = logging.getLogger(__name__)

# How long a slot is held without renewal before it frees itself (a killed process's slots),
# and how often a held one is renewed.
SLOT_TTL = 15.0
SLOT_RENEW = 5.0
# Seconds between probes of a backend that is down, and between refreshes of a backend's
# model list.
PROBE_SECONDS = 5.0
REFRESH_SECONDS = 60.0
# A request waits this long for a free slot on any backend before it goes to the least busy.
SLOT_WAIT = 0.25


class SlotKeeper(Protocol):
    """Counting slots per backend, held by one request each (shared across processes with
    Redis, in memory otherwise)."""

    async def try_acquire(self, name: str, holder: str, capacity: int, ttl: float) -> bool: ...

    async def renew(self, name: str, holder: str, ttl: float) -> bool: ...

    async def release(self, name: str, holder: str) -> None: ...


class LocalSlots:
    """Slots counted in this process (no Redis: one process uses the backends)."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    async def try_acquire(self, name: str, holder: str, capacity: int, ttl: float) -> bool:
        holders = self._holders.setdefault(name, set())
        if len(holders) >= capacity:
            return False
        holders.add(holder)
        return True

    async def renew(self, name: str, holder: str, ttl: float) -> bool:
        return holder in self._holders.get(name, set())

    async def release(self, name: str, holder: str) -> None:
        self._holders.get(name, set()).discard(holder)


def is_down(error: OllamaError) -> bool:
    """Whether a failure before the first byte means the backend itself is gone: unreachable,
    hung, or a proxy in front of it saying so (502, 504)."""
    if isinstance(error, OllamaUnavailable):
        return True
    if isinstance(error, OllamaTimeout):
        return not error.started
    return isinstance(error, OllamaRequestError) and error.status in (502, 504)


def fails_over(error: OllamaError) -> bool:
    """Whether a failure before the first byte should send the request to another backend:
    the backend is down, full, or failed this request on its side (5xx: a crashed runner),
    rather than the request being wrong (4xx)."""
    return is_down(error) or (isinstance(error, OllamaRequestError) and error.status >= 500)


class OllamaPool:
    """The Ollama client the bot uses: one backend, or several with routing and failover."""

    def __init__(
        self,
        backends: Sequence[tuple[str, int]],
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        slots: SlotKeeper | None = None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.backends = [
            Backend(
                OllamaClient(url, connect_timeout=connect_timeout, read_timeout=read_timeout),
                capacity,
                metrics=metrics,
            )
            for url, capacity in backends
        ]
        # Shared slots (Redis) are renewed while held and may fail; local ones need neither.
        self.shared_slots = slots is not None
        self.slots: SlotKeeper = slots or LocalSlots()
        self._unreleased: list[tuple[str, str]] = []  # releases Redis failed: owed still
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
                    await held.enter_async_context(self._holding(backend, holder))
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
                await self._give_back(backend, holder)

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
                async with self._holding(backend, holder):
                    answer = await backend.client.complete(
                        model, messages, options=options, keep_alive=keep_alive, think=think
                    )
                self._served(route, backend)
                return answer
            except OllamaError as error:
                if not self._fail_over(backend, error, tried):
                    raise
            finally:
                await self._give_back(backend, holder)

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
                if await self._try_slot(backend, holder):
                    backend.started()
                    return backend, holder
            await self.sleep(SLOT_WAIT)

    async def _try_slot(self, backend: Backend, holder: str) -> bool:
        try:
            await self._settle_releases()
            return await self.slots.try_acquire(
                backend.slot_name, holder, backend.capacity, SLOT_TTL
            )
        except Exception as exc:
            # Redis unreachable: count this process's own requests instead (other processes
            # may then overload the backend a while; Ollama queues what it cannot run).
            log.warning("event=slots_unavailable backend=%s cause=%r", backend.url, str(exc))
            return backend.in_flight < backend.capacity

    def _holding(self, backend: Backend, holder: str) -> AbstractAsyncContextManager[None]:
        """While a request runs: a shared slot is renewed, so that its TTL only frees the
        slots of a process that died."""
        if not self.shared_slots:
            return nullcontext()
        name = backend.slot_name
        return renewing(
            lambda: self.slots.renew(name, holder, SLOT_TTL), SLOT_RENEW, f"slot:{backend.url}"
        )

    async def _give_back(self, backend: Backend, holder: str) -> None:
        backend.finished()
        try:
            await self.slots.release(backend.slot_name, holder)
        except Exception as exc:
            # Redis unreachable: released when it answers again (or by the slot's TTL), so
            # that a restarted Redis does not keep this process's finished requests busy.
            self._unreleased.append((backend.slot_name, holder))
            log.warning("event=slots_unavailable backend=%s cause=%r", backend.url, str(exc))

    async def _settle_releases(self) -> None:
        while self._unreleased:
            name, holder = self._unreleased[0]
            await self.slots.release(name, holder)
            self._unreleased.pop(0)

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


async def pull_everywhere(
    backends: Sequence[Backend], model: str
) -> AsyncGenerator[PullProgress, None]:
    """Pull on every backend at once; the progress lines of all of them, with each layer
    named per backend so that one tracker adds them up into one bar."""
    queue: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()

    async def pull_one(index: int, backend: Backend) -> None:
        try:
            async for progress in backend.client.pull(model):
                digest = f"{index}:{progress.digest}" if progress.digest else ""
                total, completed = progress.total, progress.completed
                await queue.put(PullProgress(progress.status, digest, total, completed))
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pull_one(i, b)) for i, b in enumerate(backends)]
    try:
        async for progress in _drain(queue, len(tasks)):
            yield progress
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(
    queue: asyncio.Queue[PullProgress | BaseException | None], producers: int
) -> AsyncGenerator[PullProgress, None]:
    """Progress from several producers until all are done; the first failure is raised once
    the others finished (a pull that fails on one backend fails)."""
    failure: BaseException | None = None
    while producers:
        item = await queue.get()
        if item is None:
            producers -= 1
        elif isinstance(item, BaseException):
            failure = failure or item
        else:
            yield item
    if failure is not None:
        raise failure
