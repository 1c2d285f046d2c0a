"""Reading many streams at once cheaply: a shared beat, and one watch for silent servers.

Ollama flushes every token. Read as they come, each token wakes the whole chain (socket,
decoder, reply text, scheduler) and pays for aiohttp's idle-read timer being moved; with a
hundred replies streaming, that is most of the bot's CPU. Both costs are per read, not per
stream, so both are shared here: streams read on a common beat, and one timer watches them all
for servers that went quiet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp


class ReadTicker:
    """A beat shared by every stream of a transport, so that a busy bot reads each stream a
    few times a second, not once per token.

    A stream that has just read waits for the next beat, its tokens gathering in aiohttp's
    buffer meanwhile, and handles them in one go. One sleep serves all waiting streams (a timer
    each would cost what it saves): the first stream to wait sleeps to the beat and wakes the
    others. A stream that has not read for a beat reads at once, so the first bytes and a slow
    stream are never held back. (A plain ``asyncio.sleep``, not a raw timer: SimCord lets
    sleeps run in real time but would park a bare ``call_later`` until a test moves its clock.)"""

    def __init__(self, period: float) -> None:
        self.period = period
        self._waiters: list[asyncio.Future[None]] = []
        self._leader: asyncio.AbstractEventLoop | None = None  # the loop whose beat is coming

    def due(self, last_read: float, now: float) -> bool:
        """Whether a stream that read at ``last_read`` should wait for the beat."""
        return now - last_read < self.period

    async def beat(self) -> None:
        loop = asyncio.get_running_loop()
        if self._leader is loop:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await waiter  # a cancelled waiter is its own; the others still get the beat
            return
        # No beat coming on this loop (or only on a closed one): this stream brings it.
        self._leader, self._waiters = loop, []
        try:
            await asyncio.sleep(self.period)
        finally:  # also when the leader is cancelled: the others then read a little early
            self._leader = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class IdleWatch:
    """Ends a body read that waited ``timeout`` seconds for a byte, as aiohttp's ``sock_read``
    would, but with one timer for every stream instead of one moved on every packet.

    A read that waits too long gets :class:`aiohttp.SocketTimeoutError` (a ``TimeoutError``,
    what ``sock_read`` raises) and its connection is closed. The check runs every quarter of
    the timeout (at most every 5 s) while a stream is open, so a silent server is noticed
    within 1.25 timeouts; with no stream open no timer is left behind."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Each open stream, and since when it has been waiting for bytes (None: not waiting).
        self._open: dict[aiohttp.ClientResponse, float | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def watching(self, response: aiohttp.ClientResponse) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # streams of a closed loop: nothing left to watch there
            self._open.clear()
            self._loop, self._timer = loop, None
        self._open[response] = None
        if self._timer is None:
            self._timer = loop.call_later(self._every, self._check)
        try:
            yield
        finally:
            self._open.pop(response, None)
            if not self._open and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def waiting(self, response: aiohttp.ClientResponse, now: float) -> None:
        if response in self._open:
            self._open[response] = now

    def done(self, response: aiohttp.ClientResponse) -> None:
        if response in self._open:
            self._open[response] = None

    @property
    def _every(self) -> float:
        return min(self.timeout / 4, 5.0)

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for response, since in list(self._open.items()):
            if since is not None and now - since >= self.timeout:
                self._open[response] = None
                response.content.set_exception(
                    aiohttp.SocketTimeoutError("Timeout on reading data from socket")
                )
                response.close()
        if self._open:
            self._timer = loop.call_later(self._every, self._check)
