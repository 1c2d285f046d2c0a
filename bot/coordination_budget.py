"""Rate budgets without I/O: a token bucket for one process, and :class:`LeasedBudget`, which
keeps a local pocket of tokens taken a few at a time from a shared bucket (in Redis: see
bot/redis_coordination.py). The interfaces are in bot/coordination.py; this module is kept apart
from it so that the Redis module can use it without an import circle.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from .clock import Clock

if TYPE_CHECKING:
    from .coordination import TokenBucket


class Taken(NamedTuple):
    """What a bucket answered: ``granted`` tokens (all asked for, or none) and ``wait``
    seconds: when none were granted, until asking again could succeed; when some were, until
    they may be used (0 unless reserved ahead)."""

    granted: int
    wait: float


def check_take(n: int, ahead: float, burst: int) -> None:
    """A request no bucket could ever grant is a bug in the caller: say so instead of asking
    it to wait forever."""
    if not 1 <= n <= burst or not ahead >= 0:
        raise ValueError(f"cannot take {n} tokens ({ahead!r} s ahead) from a bucket of {burst}")


def check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"a TTL must be positive seconds, not {ttl!r}")


class MemoryTokenBucket:
    """A token bucket for one process (the same arithmetic as the Redis script)."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"a bucket needs a positive rate and burst, not {rate!r}, {burst!r}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.granted = 0
        self.redis_calls = 0  # none: the bucket is here

    async def take(self, n: int, ahead: float = 0.0) -> Taken:
        check_take(n, ahead, self.burst)
        now = self.clock()
        # max(0, ...): a clock that stepped back refills nothing rather than draining.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
        if self._tokens - n < -ahead * self.rate:
            return Taken(0, (n - self._tokens) / self.rate - ahead)
        self._tokens -= n
        self.granted += n
        return Taken(n, max(0.0, -self._tokens / self.rate))

    async def acquire(self, n: int = 1) -> float:
        taken = await self.take(n)
        return 0.0 if taken.granted else taken.wait


class LeasedBudget:
    """A rate budget that takes tokens from a shared bucket a few at a time into a local pocket
    and hands them out from there, so that Redis sees one call per lease, not per request.

    The lease is sized to what this process used over the last second, scaled to ``horizon``
    seconds, or to the tasks waiting for it if more (at most ``most``): an idle process takes
    one token at a time and wastes none, a busy one takes up to ``most``. Tokens still in the
    pocket ``horizon`` seconds after they became usable age out, unused: they were counted
    against the shared rate when taken, so a process that leases and then goes quiet costs the
    others up to ``most - 1`` tokens.

    When the shared bucket is empty, the lease is reserved up to ``ahead`` seconds in advance
    (the bucket goes into debt, GCRA-style) and becomes usable when a plain bucket would have
    granted it: callers are told to wait until then, and ask Redis nothing meanwhile. So each
    process holds at most one lease at a time and makes one call per lease however many
    processes compete; polling an empty bucket would make one call per refusal per process.

    The trade-off: a token counted at ``t`` may be spent until ``t + horizon``, so over any
    ``T`` seconds the processes together spend at most ``rate * (T + horizon) + burst``, not
    ``rate * T + burst``. Plan the shared rate with that headroom: for Discord's 50 per second,
    ``rate <= (50 - burst) / (1 + horizon)``, 40/s at a burst of 1 and ``horizon=0.2`` (the
    45/s of :class:`bot.rate_limits.DiscordLimits` assumes one process spending at once).

    The pocket's times are this process's clock, taken after the bucket answered (so a
    reservation is never used early): local durations, never compared with another process's.
    """

    def __init__(
        self,
        source: TokenBucket,
        *,
        most: int = 5,
        horizon: float = 0.2,
        ahead: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.most = most
        self.horizon = horizon
        self.ahead = ahead
        self.clock = clock
        self.granted = 0
        self.redis_calls = 0
        self.wasted = 0  # leased tokens that aged out unused
        self._pocket = 0
        self._usable_at = 0.0
        self._until = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (when, tokens) granted last second
        # One lease at a time: two tasks refilling at once would each lease for the pocket.
        self._refill = asyncio.Lock()
        self._queued = 0  # tasks waiting for the lock

    async def acquire(self, n: int = 1) -> float:
        if (wait := self._from_pocket(n, self.clock())) is not None:
            return wait
        self._queued += 1
        try:
            await self._refill.acquire()
        finally:
            self._queued -= 1
        try:
            return await self._lease(n)
        finally:
            self._refill.release()

    async def _lease(self, n: int) -> float:
        """Takes a lease from the shared bucket (holding the refill lock) and ``n`` from it."""
        now = self.clock()
        if (wait := self._from_pocket(n, now)) is not None:
            return wait  # another task leased meanwhile
        self.wasted += self._pocket  # fewer than n (only when n > 1): they cannot serve it
        self._pocket = 0
        # Tasks queued behind this one want a token each within the round trip.
        expected = max(self._expected(now), n + self._queued)
        want = max(n, min(self.most, self.source.burst, expected))
        self.redis_calls += 1
        taken = await self.source.take(want, self.ahead)
        if not taken.granted:
            return taken.wait  # more than ``ahead`` seconds of leases are queued
        after = self.clock()
        self._pocket = taken.granted
        self._usable_at = after + taken.wait
        self._until = self._usable_at + self.horizon
        wait = self._from_pocket(n, after)
        assert wait is not None
        return wait

    def _from_pocket(self, n: int, now: float) -> float | None:
        """0 after taking ``n`` from the pocket; the wait when they are there but reserved for
        later; None when the pocket cannot serve ``n`` (after throwing out aged tokens)."""
        if self._pocket and now >= self._until:
            self.wasted += self._pocket
            self._pocket = 0
        if self._pocket < n:
            return None
        if now < self._usable_at:
            return self._usable_at - now
        self._pocket -= n
        self.granted += n
        self._recent.append((now, n))
        return 0.0

    def _expected(self, now: float) -> int:
        """Tokens this process will likely use within ``horizon``: its rate over the last
        second (or since its first grant in it, but over no less than ``horizon``)."""
        while self._recent and self._recent[0][0] <= now - 1.0:
            self._recent.popleft()
        if not self._recent:
            return 1
        span = max(self.horizon, now - self._recent[0][0])
        return max(1, round(sum(n for _, n in self._recent) * self.horizon / span))
