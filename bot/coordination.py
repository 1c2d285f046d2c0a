"""What several bot processes (Discord shards) must agree on, and the same in one process.

Three primitives, each an interface with an in-process implementation here (plain asyncio: one
process, no Redis) and a Redis one in :mod:`bot.redis_coordination` (every process sharing the
server):

* :class:`RateBudget`: tokens at a rate with a burst, e.g. Discord's 50 REST requests per second
  per bot token, which every shard spends. ``acquire`` never sleeps: it answers 0 (taken) or the
  seconds to wait, and the caller (the scheduler) decides what to do meanwhile.
  :class:`LeasedBudget` puts a local pocket in front of a shared bucket so that a process asks
  Redis once for a few tokens, not once per request, and reserves them ahead when the bucket
  is empty rather than polling it.
* :class:`Lease`: one owner at a time for a name (a conversation during a rolling restart), with
  a TTL so that a killed process's lease frees itself.
* :class:`Slots`: a counting semaphore per name (a GPU backend taking 4 generations at once),
  each holder with its own expiry, for the same reason.

Durations are seconds. In memory they are measured with an injected clock (SimCord freezes
``time.monotonic`` in bot code, see bot/clock.py); in Redis with the server's own clock, so
processes whose clocks disagree still agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from .background import cancel_and_wait
from .clock import Clock, Sleep
from .coordination_budget import LeasedBudget, MemoryTokenBucket, Taken, check_ttl

__all__ = [
    "Coordination",
    "Lease",
    "LeasedBudget",
    "MemoryCoordination",
    "RateBudget",
    "Slots",
    "Taken",
    "TokenBucket",
    "coordination_for",
    "is_shared",
    "renewing",
]

log = logging.getLogger(__name__)


class RateBudget(Protocol):
    """Tokens at a rate: ``acquire(n)`` takes ``n`` and returns 0, or takes nothing and returns
    the seconds to wait before asking again."""

    @property
    def granted(self) -> int:
        """Tokens handed out so far."""

    @property
    def redis_calls(self) -> int:
        """Calls made to Redis (or, for a leased budget, to the bucket it draws on) so far."""

    async def acquire(self, n: int = 1) -> float: ...


class TokenBucket(RateBudget, Protocol):
    """A bucket of ``burst`` tokens refilled at ``rate`` per second, that can also reserve
    tokens ahead of time (what :class:`LeasedBudget` draws on)."""

    @property
    def rate(self) -> float: ...

    @property
    def burst(self) -> int: ...

    async def take(self, n: int, ahead: float = 0.0) -> Taken:
        """``n`` tokens, or none and the wait. With ``ahead`` > 0 the bucket may run up to
        ``ahead`` seconds into debt: the tokens are granted at once, usable after the wait
        given (when a plain bucket would have granted them)."""


class Lease(Protocol):
    """One owner at a time per name; the lease ends after ``ttl`` seconds unless renewed.
    Acquiring a lease one already holds renews it (so a call retried after a lost reply
    succeeds)."""

    async def acquire(self, name: str, owner: str, ttl: float) -> bool: ...

    async def renew(self, name: str, owner: str, ttl: float) -> bool: ...

    async def release(self, name: str, owner: str) -> None: ...

    async def holder(self, name: str) -> str | None: ...


class Slots(Protocol):
    """At most ``capacity`` holders per name, each gone after its ``ttl`` unless renewed. A
    holder takes at most one slot per name; taking it again renews it."""

    async def try_acquire(self, name: str, holder: str, capacity: int, ttl: float) -> bool: ...

    async def renew(self, name: str, holder: str, ttl: float) -> bool: ...

    async def release(self, name: str, holder: str) -> None: ...

    async def in_use(self, name: str) -> int: ...


class Coordination(Protocol):
    """The primitives of one backend: :func:`coordination_for` picks it. ``budget`` is what a
    process spends (in Redis a :class:`LeasedBudget`, one per name in a process; in memory the
    bucket itself); ``bucket`` is the shared bucket under it (in Redis, a call per acquire)."""

    @property
    def lease(self) -> Lease: ...

    @property
    def slots(self) -> Slots: ...

    def bucket(self, name: str, rate: float, burst: int) -> TokenBucket: ...

    def budget(self, name: str, rate: float, burst: int) -> RateBudget: ...

    async def close(self) -> None: ...


class MemoryLease:
    """Leases for one process: a dict of owner and expiry."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._leases: dict[str, tuple[str, float]] = {}

    def _current(self, name: str) -> str | None:
        lease = self._leases.get(name)
        if lease is not None and lease[1] <= self.clock():
            del self._leases[name]
            return None
        return lease[0] if lease else None

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        if self._current(name) not in (None, owner):
            return False
        self._leases[name] = (owner, self.clock() + ttl)
        return True

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        if self._current(name) != owner:
            return False
        self._leases[name] = (owner, self.clock() + ttl)
        return True

    async def release(self, name: str, owner: str) -> None:
        if self._current(name) == owner:
            del self._leases[name]

    async def holder(self, name: str) -> str | None:
        return self._current(name)


class MemorySlots:
    """Slots for one process: per name, a dict of holder and expiry."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._slots: dict[str, dict[str, float]] = {}

    def _holders(self, name: str) -> dict[str, float]:
        now = self.clock()
        holders = {h: until for h, until in self._slots.get(name, {}).items() if until > now}
        self._slots[name] = holders
        return holders

    async def try_acquire(self, name: str, holder: str, capacity: int, ttl: float) -> bool:
        check_ttl(ttl)
        holders = self._holders(name)
        if holder not in holders and len(holders) >= capacity:
            return False
        holders[holder] = self.clock() + ttl
        return True

    async def renew(self, name: str, holder: str, ttl: float) -> bool:
        check_ttl(ttl)
        holders = self._holders(name)
        if holder not in holders:
            return False  # expired (or never held): its slot may be someone else's by now
        holders[holder] = self.clock() + ttl
        return True

    async def release(self, name: str, holder: str) -> None:
        self._holders(name).pop(holder, None)

    async def in_use(self, name: str) -> int:
        return len(self._holders(name))


class MemoryCoordination:
    """The primitives for one process. A name's bucket and budget are the same object wherever
    they are asked for: everything in the process spends the one budget."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.lease: Lease = MemoryLease(clock)
        self.slots: Slots = MemorySlots(clock)
        self._buckets: dict[str, MemoryTokenBucket] = {}

    def bucket(self, name: str, rate: float, burst: int) -> TokenBucket:
        if name not in self._buckets:
            self._buckets[name] = MemoryTokenBucket(rate, burst, self.clock)
        return self._buckets[name]

    def budget(self, name: str, rate: float, burst: int) -> RateBudget:
        return self.bucket(name, rate, burst)  # already local: nothing to lease

    async def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "MemoryCoordination()"


def coordination_for(url: str | None, clock: Clock = time.monotonic) -> Coordination:
    """The in-process primitives for None or ``memory://``; Redis's for
    ``redis://[:password@]host:port/db`` or ``rediss://`` (the forms HISTORY_STORE accepts,
    validated by bot.settings). Anything else is a ValueError: a SQLite file is one process's."""
    if url is None or url == "memory://":
        return MemoryCoordination(clock)
    if is_shared(url):
        from .redis_coordination import RedisCoordination  # redis only for those who use it

        return RedisCoordination(url, clock)
    raise ValueError("coordination needs a redis:// or rediss:// URL, or none for one process")


def is_shared(url: str | None) -> bool:
    """Whether the store URL is one every process reaches (so coordination goes through it)."""
    return url is not None and url.startswith(("redis://", "rediss://"))


@asynccontextmanager
async def renewing(
    renew: Callable[[], Awaitable[bool]], every: float, what: str, *, sleep: Sleep = asyncio.sleep
) -> AsyncIterator[None]:
    """Renew a lease or a slot every ``every`` seconds while the block runs. A renewal that
    fails (Redis unreachable, or the TTL ran out while this process was stalled) is logged;
    the work in the block goes on: stopping it would lose more than the overlap risks."""

    async def keep() -> None:
        while True:
            await sleep(every)
            try:
                if not await renew():
                    log.warning("event=renewal_lost what=%s", what)
                    return
            except Exception as exc:  # Redis down: the block's own calls will say so too
                log.warning("event=renewal_failed what=%s cause=%r", what, str(exc))

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        await cancel_and_wait(task)
