"""Coordination between bot processes: the rate budget, leases and slots, in memory and in a real
redis-server, where several clients (as several processes would) share them. Time bounds are
measured with the clock the implementation uses (Redis's TIME for Redis) and only ever checked
in the direction the primitive guarantees, so a slow machine cannot fail them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from bot.coordination import (
    Coordination,
    LeasedBudget,
    MemoryCoordination,
    RateBudget,
    coordination_for,
)
from bot.coordination_budget import MemoryTokenBucket
from bot.redis_coordination import RedisCoordination
from tests.redis_server import RedisServer, started_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # Coordination keys need no durability (a forgotten bucket is a full one): no fsync per
    # write, which would only slow the many small writes of these tests.
    server = started_redis(tmp_path_factory.mktemp("redis"), "--appendonly", "no")
    yield server
    server.stop()


@dataclass
class Backend:
    """Makes clients of one backend (each Redis client its own connection pool, as another
    process would have; memory has the one) and reads that backend's clock."""

    kind: str
    client: Callable[[], Coordination]
    now: Callable[[], Awaitable[float]]


_names = iter(range(1_000_000))


def fresh(prefix: str) -> str:
    """A name no other test used: tests share one server."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    made: list[Coordination] = []
    memory = MemoryCoordination()
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None

    def client() -> Coordination:
        coordination = memory if url is None else coordination_for(url)
        made.append(coordination)
        return coordination

    async def now() -> float:
        if url is None:
            return time.monotonic()
        seconds, microseconds = await made[0].redis.time()  # type: ignore[attr-defined]
        return float(seconds) + microseconds / 1e6

    client()  # the clock's client
    yield Backend(request.param, client, now)
    for coordination in made:
        await coordination.close()


async def spend(budget: RateBudget, attempts: int) -> int:
    """Asks ``attempts`` times, sleeping the wait the budget gives after each refusal (as the
    scheduler does); returns the tokens granted."""
    granted = 0
    for _ in range(attempts):
        wait = await budget.acquire()
        if wait == 0:
            granted += 1
        else:
            assert wait > 0
            await asyncio.sleep(wait)
    return granted


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Polls ``check`` until true; returns how long that took (fails after ``within``)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, "still not true after the TTL"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- the rate budget ---------------------------------------------------------------------------


async def test_bucket_grants_at_most_rate_times_seconds_plus_burst(backend: Backend) -> None:
    rate, burst = 20.0, 5
    bucket = backend.client().bucket(fresh("budget"), rate, burst)
    start = await backend.now()
    granted = await spend(bucket, attempts=40)
    elapsed = await backend.now() - start
    assert granted <= rate * elapsed + burst
    assert granted == bucket.granted
    assert granted >= 20  # it does grant: sleeping the wait given is (nearly) always enough


async def test_a_refused_acquire_says_how_long_to_wait(backend: Backend) -> None:
    rate, burst = 20.0, 3
    bucket = backend.client().bucket(fresh("budget"), rate, burst)
    assert [await bucket.acquire() for _ in range(burst)] == [0.0] * burst
    wait = await bucket.acquire(2)
    assert 0 < wait <= 2 / rate
    with pytest.raises(ValueError):
        await bucket.acquire(burst + 1)  # could never be granted: a bug, not a wait


async def test_leased_budgets_on_two_clients_never_exceed_the_shared_rate(
    backend: Backend,
) -> None:
    rate, burst, name = 20.0, 2, fresh("budget")
    budgets = [LeasedBudget(backend.client().bucket(name, rate, burst)) for _ in range(2)]
    start = await backend.now()
    granted = await asyncio.gather(*(spend(budget, attempts=25) for budget in budgets))
    elapsed = await backend.now() - start
    # Tokens reserved ahead are counted when reserved, usable (and granted) only later.
    assert sum(granted) <= rate * elapsed + burst
    assert all(g > 0 for g in granted)  # both get a share
    sources = {id(budget.source): budget.source for budget in budgets}  # memory: one bucket
    taken = sum(source.granted for source in sources.values())
    assert sum(granted) + sum(budget.wasted for budget in budgets) <= taken
    assert taken <= rate * (elapsed + budgets[0].ahead) + burst


@pytest.mark.parametrize("processes", [2, 4])
async def test_leased_budgets_ask_the_shared_bucket_far_less_than_they_grant(
    backend: Backend, processes: int
) -> None:
    rate, burst, name = 50.0, 5, fresh("budget")
    budgets = [LeasedBudget(backend.client().bucket(name, rate, burst)) for _ in range(processes)]
    await asyncio.gather(*(spend(budget, attempts=100 // processes) for budget in budgets))
    granted = sum(budget.granted for budget in budgets)
    calls = sum(budget.redis_calls for budget in budgets)
    assert granted >= 60
    if backend.kind == "redis":
        assert calls == sum(budget.source.redis_calls for budget in budgets)
    # Two busy processes lease about 5 tokens a call (50/s * 0.2 s / 2); four, about 2.5.
    assert calls * (2.5 if processes == 2 else 1.5) <= granted


async def test_concurrent_tasks_share_one_pocket(backend: Backend) -> None:
    rate, burst = 50.0, 5
    budget = LeasedBudget(backend.client().bucket(fresh("budget"), rate, burst))
    waits = await asyncio.gather(*(budget.acquire() for _ in range(10)))
    assert waits.count(0.0) == budget.granted <= burst
    assert budget.redis_calls < 10  # leases, not a call per task
    # The rest wait for one lease reserved ahead (at most 5 tokens: 0.1 s at 50/s).
    assert all(0 < wait <= 5 / rate + 0.05 for wait in waits if wait)
    await asyncio.sleep(max(waits))
    again = await asyncio.gather(*(budget.acquire() for wait in waits if wait))
    assert again.count(0.0) >= 1  # the reservation is there when they come back


async def test_a_lease_on_an_empty_bucket_is_reserved_and_asks_nothing_until_usable() -> None:
    now = [0.0]
    bucket = MemoryTokenBucket(10.0, 1, clock=lambda: now[0])
    first, second = (LeasedBudget(bucket, clock=lambda: now[0]) for _ in range(2))
    assert await first.acquire() == 0  # the bucket's only token
    assert await bucket.acquire() == pytest.approx(0.1)  # a plain take is refused
    assert await second.acquire() == pytest.approx(0.1)  # a lease is reserved for then
    now[0] += 0.05
    assert await second.acquire() == pytest.approx(0.05)
    assert second.redis_calls == 1 and bucket.granted == 2
    now[0] += 0.05
    assert await second.acquire() == 0 and second.redis_calls == 1
    assert await bucket.acquire() == pytest.approx(0.1)  # the reservation was counted


async def test_unused_leased_tokens_age_out() -> None:
    now = [0.0]
    bucket = MemoryTokenBucket(1000.0, 10, clock=lambda: now[0])
    budget = LeasedBudget(bucket, most=5, horizon=0.2, clock=lambda: now[0])

    def pocket() -> int:
        return bucket.granted - budget.granted - budget.wasted

    for _ in range(50):  # 200 requests a second: it soon leases ahead
        assert await budget.acquire() == 0
        now[0] += 0.005
        if pocket():
            break
    left, calls = pocket(), budget.redis_calls
    assert left > 0 and calls <= budget.granted
    now[0] += 0.2  # past the horizon: the pocket is thrown away, the bucket asked again
    assert await budget.acquire() == 0
    assert budget.wasted == left and budget.redis_calls == calls + 1


async def test_an_idle_process_leases_one_token_at_a_time() -> None:
    now = [0.0]
    bucket = MemoryTokenBucket(50.0, 10, clock=lambda: now[0])
    budget = LeasedBudget(bucket, clock=lambda: now[0])
    for _ in range(5):  # one request a second
        assert await budget.acquire() == 0
        now[0] += 1.0
    assert bucket.granted == budget.granted == 5 and budget.wasted == 0


# --- leases ------------------------------------------------------------------------------------


async def test_a_lease_has_one_owner_at_a_time_across_clients(backend: Backend) -> None:
    a, b, name = backend.client().lease, backend.client().lease, fresh("conversation")
    results = await asyncio.gather(a.acquire(name, "a", 5), b.acquire(name, "b", 5))
    assert sorted(results) == [False, True]
    owner = "a" if results[0] else "b"
    assert await a.holder(name) == await b.holder(name) == owner
    assert await a.acquire(name, owner, 5)  # again (a retried call): still the owner's


async def test_only_the_owner_renews_or_releases(backend: Backend) -> None:
    a, b, name = backend.client().lease, backend.client().lease, fresh("conversation")
    assert await a.acquire(name, "a", 5)
    assert not await b.renew(name, "b", 5)
    await b.release(name, "b")
    assert await b.holder(name) == "a"
    assert await a.renew(name, "a", 5)
    await a.release(name, "a")
    assert await b.holder(name) is None
    assert not await a.renew(name, "a", 5)  # released: nothing to renew
    assert await b.acquire(name, "b", 5)


async def test_a_lease_expires_after_its_ttl(backend: Backend) -> None:
    a, b, name = backend.client().lease, backend.client().lease, fresh("conversation")
    assert await a.acquire(name, "a", 0.2)  # then "a" is killed: it never renews

    async def free() -> bool:
        return await b.holder(name) is None

    assert await eventually(free) >= 0.15  # not before its TTL (less the polling's slack)
    assert await b.acquire(name, "b", 5)
    assert not await a.renew(name, "a", 5)  # too late: it is "b"'s now


async def test_renewing_a_lease_keeps_it_past_its_first_ttl(backend: Backend) -> None:
    a, name = backend.client().lease, fresh("conversation")
    assert await a.acquire(name, "a", 0.2)
    assert await a.renew(name, "a", 30)
    await asyncio.sleep(0.4)
    assert await a.holder(name) == "a"


# --- slots -------------------------------------------------------------------------------------


async def test_slots_never_exceed_capacity_across_clients(backend: Backend) -> None:
    clients, name, capacity = [backend.client().slots for _ in range(2)], fresh("gpu"), 3
    holding, most, sampled = 0, 0, 0

    async def generate(task: int) -> None:
        nonlocal holding, most, sampled
        slots = clients[task % 2]
        while True:
            if await slots.try_acquire(name, f"task-{task}", capacity, 5):
                break
            await asyncio.sleep(0.002)
        holding += 1
        most = max(most, holding)
        sampled = max(sampled, await slots.in_use(name))
        await asyncio.sleep(0.02)
        holding -= 1
        await slots.release(name, f"task-{task}")

    await asyncio.gather(*(generate(task) for task in range(20)))
    assert most == capacity and sampled <= capacity
    assert await clients[0].in_use(name) == 0


async def test_a_killed_holders_slot_frees_after_its_ttl(backend: Backend) -> None:
    name, survivor = fresh("gpu"), backend.client()
    killed = (
        backend.client()
        if backend.kind == "memory"
        else coordination_for(
            survivor.url  # type: ignore[attr-defined]
        )
    )
    assert await killed.slots.try_acquire(name, "killed", 1, 0.2)
    await killed.close()  # the process is gone, its slot still counted
    assert not await survivor.slots.try_acquire(name, "survivor", 1, 5)

    async def acquired() -> bool:
        return await survivor.slots.try_acquire(name, "survivor", 1, 5)

    await eventually(acquired)
    assert await survivor.slots.in_use(name) == 1
    assert not await survivor.slots.renew(name, "killed", 5)  # its slot is gone for good


async def test_a_holder_takes_one_slot_and_renews_it(backend: Backend) -> None:
    slots, name = backend.client().slots, fresh("gpu")
    assert await slots.try_acquire(name, "h", 2, 0.2)
    assert await slots.try_acquire(name, "h", 2, 0.2)  # the same holder: still one slot
    assert await slots.in_use(name) == 1
    assert await slots.renew(name, "h", 30)
    assert not await slots.renew(name, "stranger", 30)
    await asyncio.sleep(0.4)
    assert await slots.in_use(name) == 1
    await slots.release(name, "h")
    await slots.release(name, "h")
    assert await slots.in_use(name) == 0


# --- the factory and Redis's keys --------------------------------------------------------------


async def test_the_factory_picks_the_backend_from_the_url(redis_server: RedisServer) -> None:
    assert isinstance(coordination_for(None), MemoryCoordination)
    assert isinstance(coordination_for("memory://"), MemoryCoordination)
    with pytest.raises(ValueError):
        coordination_for("sqlite:///data/history.db")
    shared = coordination_for(redis_server.url)
    try:
        assert isinstance(shared, RedisCoordination)
        assert isinstance(shared.budget("rest", 45, 5), LeasedBudget)
        assert shared.budget("rest", 45, 5) is shared.budget("rest", 45, 5)
        assert await shared.budget("rest", 45, 5).acquire() == 0
    finally:
        await shared.close()
    secret = coordination_for("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(secret) and "***" in repr(secret)
    await secret.close()


async def test_every_redis_key_is_under_the_prefix_and_a_full_bucket_expires(
    redis_server: RedisServer,
) -> None:
    shared = RedisCoordination(redis_server.url)
    try:
        name = fresh("layout")
        assert await shared.bucket(name, 100.0, 2).acquire() == 0
        await shared.lease.acquire(name, "a", 5)
        await shared.slots.try_acquire(name, "a", 1, 5)
        keys = await shared.redis.keys(f"*{name}")
        assert sorted(keys) == [f"ollacord:{kind}:{name}" for kind in ("budget", "lease", "slots")]
        # Full again 10 ms later: kept only a second beyond that, not forever.
        assert 0 < await shared.redis.pttl(f"ollacord:budget:{name}") <= 1010
    finally:
        await shared.close()
