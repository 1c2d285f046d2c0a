"""A conversation's lease, when several bot processes share one Redis.

A conversation's turns must run one at a time, in order. Within a process the fair queue sees
to that; across processes (during a rolling restart two of them receive a shard's events) the
lease does: a turn holds its conversation's lease from its plan to its commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .coordination import Lease, renewing
from .history_store import StoreError

log = logging.getLogger(__name__)

# Freed this long after its holder died, renewed this often while a turn runs; a turn waiting
# for it asks again this often.
LEASE_TTL = 15.0
LEASE_RENEW = 5.0
LEASE_POLL = 0.25
# This process, among the others sharing the store.
PROCESS = f"{os.uname().nodename}:{os.getpid()}"


class ConversationLeases:
    """Leases of conversations, owned by this process (None: it is alone, nothing to hold)."""

    def __init__(self, lease: Lease | None, process: str = PROCESS) -> None:
        self.lease = lease
        self.process = process

    @asynccontextmanager
    async def owned(self, conversation: str) -> AsyncIterator[None]:
        """Hold the conversation's lease (several processes share the store): during a rolling
        restart two processes may both receive its messages, and only one may run a turn of
        it at a time, or their turns would interleave. Renewed while the turn runs; freed by
        its TTL if this process dies."""
        lease = self.lease
        if lease is None:
            yield
            return
        name = f"conversation:{conversation}"
        # The owner is this process: its own turns of a conversation already run one at a
        # time (the fair queue), and a lease it failed to release (Redis was down) is its own.
        owner = self.process
        try:
            # Another process's turn of it is running; it says nothing when it ends (it may
            # die instead), so ask again now and then.
            while not await lease.acquire(name, owner, LEASE_TTL):  # noqa: ASYNC110
                await asyncio.sleep(LEASE_POLL)
        except Exception as exc:  # the store's Redis is unreachable
            raise StoreError(
                f"HISTORY_STORE's Redis failed the conversation's lease: {exc}"
            ) from exc
        try:
            async with renewing(lambda: lease.renew(name, owner, LEASE_TTL), LEASE_RENEW, name):
                yield
        finally:
            try:
                await lease.release(name, owner)
            except Exception as exc:  # its TTL frees it
                log.warning("event=lease_release_failed lease=%s cause=%r", name, str(exc))
