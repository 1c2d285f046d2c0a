"""The generation slots of each Ollama backend: how many requests may run on it at once.

With Redis (several bot processes) the slots are shared by every process, each held slot
renewed while its request runs and freed by its TTL if the process dies; without, they are
counted in this process. Redis failing never stops a reply: the process then counts its own
requests, and releases Redis missed are made once it answers again.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

from .coordination import renewing
from .ollama_backend import Backend

log = logging.getLogger(__name__)

# How long a slot is held without renewal before it frees itself (a killed process's slots),
# and how often a held one is renewed.
SLOT_TTL = 15.0
SLOT_RENEW = 5.0


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


class BackendSlots:
    """Takes, keeps and gives back backends' slots for the pool."""

    def __init__(self, keeper: SlotKeeper | None) -> None:
        # Shared slots (Redis) are renewed while held and may fail; local ones need neither.
        self.shared = keeper is not None
        self.keeper: SlotKeeper = keeper or LocalSlots()
        self._unreleased: list[tuple[str, str]] = []  # releases Redis failed: owed still

    async def take(self, backend: Backend, holder: str) -> bool:
        try:
            await self._settle_releases()
            return await self.keeper.try_acquire(
                backend.slot_name, holder, backend.capacity, SLOT_TTL
            )
        except Exception as exc:
            # Redis unreachable: count this process's own requests instead (other processes
            # may then overload the backend a while; Ollama queues what it cannot run).
            log.warning("event=slots_unavailable backend=%s cause=%r", backend.url, str(exc))
            return backend.in_flight < backend.capacity

    def holding(self, backend: Backend, holder: str) -> AbstractAsyncContextManager[None]:
        """While a request runs: a shared slot is renewed, so that its TTL only frees the
        slots of a process that died."""
        if not self.shared:
            return nullcontext()
        name = backend.slot_name
        return renewing(
            lambda: self.keeper.renew(name, holder, SLOT_TTL), SLOT_RENEW, f"slot:{backend.url}"
        )

    async def give_back(self, backend: Backend, holder: str) -> None:
        try:
            await self.keeper.release(backend.slot_name, holder)
        except Exception as exc:
            # Redis unreachable: released when it answers again (or by the slot's TTL), so
            # that a restarted Redis does not keep this process's finished requests busy.
            self._unreleased.append((backend.slot_name, holder))
            log.warning("event=slots_unavailable backend=%s cause=%r", backend.url, str(exc))

    async def _settle_releases(self) -> None:
        while self._unreleased:
            name, holder = self._unreleased[0]
            await self.keeper.release(name, holder)
            self._unreleased.pop(0)
