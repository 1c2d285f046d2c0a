"""The bot's global REST budget, handed out in priority order.

Every REST call of the bot asks the gate first (:meth:`RestGate.admit`). A call goes at once
when the sliding window has room for it, keeping free the part of the budget its priority must
leave to more important calls; otherwise it waits in line, ordered by priority and then by how
long it has waited, so that a final text waiting behind intermediate edits of other channels
goes first, and among equals the oldest-starved goes first. Pure bookkeeping over an injected
clock and sleep (tested with virtual time).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from .clock import Clock, Sleep
from .rate_limits import Priority, RateWindow

# How long a waiting call naps before it looks again (a more important one may have come).
GLANCE = 0.05


class RestGate:
    """Admits REST calls within ``window``; ``keep_free(priority)`` is how many of the
    window's slots a call of that priority leaves unused."""

    def __init__(
        self,
        window: RateWindow,
        keep_free: Callable[[Priority], int],
        *,
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self.window = window
        self.keep_free = keep_free
        self.clock = clock
        self.sleep = sleep
        self._line: list[tuple[Priority, float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._turnstile: asyncio.Task[None] | None = None

    def waiting(self) -> int:
        return sum(1 for *_, future in self._line if not future.done())

    async def admit(self, priority: Priority) -> None:
        """Return once this call may go (the slot is then counted as used)."""
        now = self.clock()
        if not self._ahead_of(priority) and self._room(priority, now) == 0:
            self.window.record(now)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._line, (priority, now, next(self._order), future))
        if self._turnstile is None or self._turnstile.done():
            self._turnstile = asyncio.create_task(self._let_through())
        try:
            await future
        except asyncio.CancelledError:
            future.cancel()  # out of the line (if it was admitted meanwhile, the slot is spent)
            raise

    def ready(self, priority: Priority) -> float:
        """Seconds before a call of ``priority`` could go without waiting in line (0: now).
        A channel asks before it commits to an intermediate edit, so that it never sits in
        line holding the channel while that channel's final text becomes due."""
        now = self.clock()
        wait = self._room(priority, now)
        ahead = sum(1 for p, _, _, f in self._line if p <= priority and not f.done())
        # Others wait before it: about their share of the window each.
        return max(wait, ahead * self.window.window / max(1, self.window.limit))

    def _ahead_of(self, priority: Priority) -> bool:  # (any, not how many: the fast path)
        """Whether someone at least as important is already waiting."""
        return any(p <= priority and not f.done() for p, _, _, f in self._line)

    def _room(self, priority: Priority, now: float) -> float:
        return self.window.wait(now, keep_free=self.keep_free(priority))

    async def _let_through(self) -> None:
        """Admit the head of the line whenever the window has room for it."""
        while self._line:
            priority, _, _, future = self._line[0]
            if future.done():  # its caller gave up
                heapq.heappop(self._line)
                continue
            now = self.clock()
            wait = self._room(priority, now)
            if wait > 0:
                # A short nap: a more important call may join the line meanwhile.
                await self.sleep(min(wait, GLANCE))
                continue
            heapq.heappop(self._line)
            self.window.record(now)
            future.set_result(None)
            await asyncio.sleep(0)  # let it go before the next is considered
