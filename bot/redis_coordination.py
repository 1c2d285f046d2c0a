"""The coordination primitives (bot/coordination.py) in Redis, shared by every bot process
pointed at the same server and database.

Key layout (under ``ollacord:``, next to the history store's keys)::

    ollacord:budget:<name>  hash  tokens (below 0: reserved ahead), at (seconds, Redis's
                                  clock): a token bucket; gone once full again (a missing
                                  bucket is a full one)
    ollacord:lease:<name>   string the owner, expiring with the lease (PX)
    ollacord:slots:<name>   zset  one member per holder, scored by its expiry (ms, Redis's
                                  clock); gone when its last holder would have expired

Each operation is one Lua script on one key, which Redis runs with nothing in between (and
which a Redis Cluster can route). Time comes from the server: ``TIME`` inside the scripts, and
key expiry, never the processes' clocks, so processes with skewed clocks still agree.

Nothing here needs to survive a Redis restart the way history does: a forgotten bucket is a full
one, forgotten leases and slots are free ones. The cost of that is brief: after a restart that
lost them, two processes may each hold a lease until the first renewal fails.

A dropped connection is retried (the history store's client options). A retried call may have
run already, its reply lost; every script is safe to run twice for the caller: taking a lease or
a slot one already holds renews it, releasing twice releases once, and a bucket charged twice
only grants less, never more.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from .clock import Clock
from .coordination_budget import LeasedBudget, Taken, check_take, check_ttl
from .redis_store import PREFIX, redis_client
from .settings import shown_url

# Redis 3.2 and 4 refuse a write after TIME (a script is replicated as its source unless it asks
# for its effects to be); 5 and later replicate effects by default, and 7 keeps this as a no-op.
_EFFECTS = "if redis.replicate_commands then redis.replicate_commands() end\n"

# KEYS: the bucket. ARGV: rate per second, burst, n, ahead (seconds). Refills for the time since
# the last grant (never for a clock that went back), then grants n tokens if the bucket, after
# them, is at most `ahead` seconds in debt. Returns {n, seconds until they are usable: 0 unless
# in debt} or {0, seconds until asking again could succeed}; the wait is a string, as Redis
# would truncate a Lua number to an integer.
_TAKE = (
    _EFFECTS
    + """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, ahead = tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
if tokens - n < -ahead * rate then
    return {0, tostring((n - tokens) / rate - ahead)}
end
tokens = tokens - n
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {n, tostring(math.max(0, -tokens / rate))}
"""
)

# KEYS: the lease. ARGV: owner, TTL in ms, '1' to renew only (else acquire). Sets the owner and
# its TTL when the lease is free (acquire only) or already the owner's. Returns 1, else 0.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] and (holder or ARGV[3] == '1') then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the lease. ARGV: owner. Deletes it only if it is still the owner's (else another
# process took it after this one's expired, and it is not this one's to free).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the slots. ARGV: holder, capacity, TTL in ms, '1' to renew only. Removes the expired
# holders first, then gives the holder (a new one only when renewing is not asked and there is
# room) the expiry now + TTL; the key lives as long as its longest holder. Returns 1, else 0.
_SLOT = (
    _EFFECTS
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and (ARGV[4] == '1' or redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2])) then
    return 0
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""
)

# KEYS: the slots. The holders not expired by Redis's clock (read only: nothing removed).
_IN_USE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


def _ms(ttl: float) -> int:
    check_ttl(ttl)
    return max(1, math.ceil(ttl * 1000))


class RedisTokenBucket:
    """A token bucket in Redis, shared by every process using the same name. Every process
    must pass the same rate and burst: the script refills with the caller's."""

    def __init__(self, redis: Redis, name: str, rate: float, burst: int) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"a bucket needs a positive rate and burst, not {rate!r}, {burst!r}")
        self.key = f"{PREFIX}budget:{name}"
        self.rate = rate
        self.burst = burst
        self.granted = 0
        self.redis_calls = 0
        self._take = redis.register_script(_TAKE)

    async def take(self, n: int, ahead: float = 0.0) -> Taken:
        check_take(n, ahead, self.burst)
        self.redis_calls += 1
        args = [self.rate, self.burst, n, ahead]
        granted, wait = await self._take(keys=[self.key], args=args)
        self.granted += int(granted)
        return Taken(int(granted), float(wait))

    async def acquire(self, n: int = 1) -> float:
        taken = await self.take(n)
        return 0.0 if taken.granted else taken.wait


class RedisLease:
    """Leases in Redis: a key holding the owner, expiring with the lease."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def _key(name: str) -> str:
        return f"{PREFIX}lease:{name}"

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        return bool(await self._claim(keys=[self._key(name)], args=[owner, _ms(ttl), 0]))

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        return bool(await self._claim(keys=[self._key(name)], args=[owner, _ms(ttl), 1]))

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[self._key(name)], args=[owner])

    async def holder(self, name: str) -> str | None:
        owner = await self._redis.get(self._key(name))
        return None if owner is None else str(owner)


class RedisSlots:
    """Slots in Redis: a sorted set of holders scored by their expiry."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._slot = redis.register_script(_SLOT)
        self._in_use = redis.register_script(_IN_USE)

    @staticmethod
    def _key(name: str) -> str:
        return f"{PREFIX}slots:{name}"

    async def try_acquire(self, name: str, holder: str, capacity: int, ttl: float) -> bool:
        args: list[str | int] = [holder, capacity, _ms(ttl), 0]
        return bool(await self._slot(keys=[self._key(name)], args=args))

    async def renew(self, name: str, holder: str, ttl: float) -> bool:
        args: list[str | int] = [holder, 0, _ms(ttl), 1]
        return bool(await self._slot(keys=[self._key(name)], args=args))

    async def release(self, name: str, holder: str) -> None:
        await self._redis.zrem(self._key(name), holder)  # one command: atomic already

    async def in_use(self, name: str) -> int:
        return int(await self._in_use(keys=[self._key(name)]))


class RedisCoordination:
    """The primitives on one Redis client (one connection pool) of this process. ``budget``
    leases from the shared bucket (:class:`LeasedBudget`); ``bucket`` is the bucket itself."""

    def __init__(self, url: str, clock: Clock = time.monotonic) -> None:
        self.url = url
        self.clock = clock  # the pockets' local times (the shared state uses Redis's clock)
        self.redis = redis_client(url)
        self.lease = RedisLease(self.redis)
        self.slots = RedisSlots(self.redis)
        self._budgets: dict[str, LeasedBudget] = {}

    def bucket(self, name: str, rate: float, burst: int) -> RedisTokenBucket:
        return RedisTokenBucket(self.redis, name, rate, burst)

    def budget(self, name: str, rate: float, burst: int) -> LeasedBudget:
        # One pocket per name in a process: two would each lease tokens for the same demand.
        if name not in self._budgets:
            self._budgets[name] = LeasedBudget(self.bucket(name, rate, burst), clock=self.clock)
        return self._budgets[name]

    async def close(self) -> None:
        await self.redis.aclose()

    def __repr__(self) -> str:
        return f"RedisCoordination({shown_url(self.url)!r})"
