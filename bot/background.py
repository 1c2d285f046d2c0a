"""Background tasks that belong to something: started with :meth:`Background.spawn`, all
cancelled (and awaited) by :meth:`Background.close`, none started after that."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# While a cancelled task still runs, it is cancelled again this often (see cancel_and_wait).
CANCEL_AGAIN = 0.1


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and return once all of them ended (without raising what they raise).

    Cancelled again while one still runs: on Python 3.11, ``asyncio.wait_for`` (which redis-py
    uses for its socket timeouts) drops a cancellation that arrives just as its inner call
    completes, and the task would carry on; waiting for it once would then wait forever. A
    cancellation of the caller is not hidden."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)


class Background:
    """A set of tasks kept alive until they end or :meth:`close` cancels them (asyncio keeps
    only weak references to tasks: an unreferenced task can vanish mid-run)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run ``coro`` in the background; None (and ``coro`` closed) once closing."""
        if self.closed:
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        """Cancel what runs now and wait for it to end (new work may still start)."""
        await cancel_and_wait(*self._tasks)

    async def close(self) -> None:
        self.closed = True
        await self.cancel_all()
